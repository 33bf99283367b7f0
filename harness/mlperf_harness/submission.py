"""``mlperf submission``: one submission tree from several runs' reports, and its structural checks.

Each run's ``report`` step writes its part of the tree under ``runs/<run>/submission/<layout>/``;
this merges those parts and checks what the MLPerf submission checker checks of structure: the
required files in their places, the accuracy log's hash against the full log, and the system
description's required fields. Every problem names its file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

from rich.console import Console

from .artifacts import Workdir
from .suites import load_suite
from .sysinfo import REQUIRED_FIELDS

console = Console(stderr=True)
HASH = re.compile(r"^hash=([0-9a-f]{64})$", re.M)
PERF_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
ACCURACY_FILES = (*PERF_FILES, "accuracy.txt", "mlperf_log_accuracy.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assemble(workdir: Path, runs: list[str], out: Path, layout: str = "v1.0") -> dict[Path, Path]:
    """Merge the runs' trees into ``out``; returns each accuracy.txt's full accuracy log."""
    wd = Workdir(workdir)
    full_logs: dict[Path, Path] = {}
    for run in runs:
        part = wd.submission(run) / layout
        if not part.is_dir():
            raise FileNotFoundError(f"{part}: run {run} has no {layout} submission tree; run its report step first")
        for src in part.rglob("*"):
            if src.is_file():
                dest = out / src.relative_to(part)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
                if src.name == "accuracy.txt":
                    scenario = src.parent.parent.name
                    full_logs[dest] = wd.harness_run(run, scenario, "AccuracyOnly") / "mlperf_log_accuracy.json"
    return full_logs


def _need(problems: list[str], path: Path, what: str = "required file") -> bool:
    if not path.is_file():
        problems.append(f"{path}: missing {what}")
        return False
    return True


def check_v10(root: Path, full_logs: dict[Path, Path] | None = None) -> list[str]:
    """Structural problems of a v1.0 tree (``closed/<submitter>/...``), each naming its file."""
    problems: list[str] = []
    submitters = [d for d in (root / "closed").glob("*") if d.is_dir()] + [d for d in (root / "open").glob("*")]
    if not submitters:
        return [f"{root}: no closed/<submitter> or open/<submitter> directory"]
    suite = load_suite("v1.0")
    for sub in submitters:
        for results in sorted((sub / "results").glob("*/*/*")):
            system, benchmark, scenario = results.parts[-3:]
            base = benchmark.split("-99")[0]
            _check_system(problems, sub / "systems" / f"{system}.json")
            for name in PERF_FILES:
                _need(problems, results / "performance" / "run_1" / name)
            summary = results / "performance" / "run_1" / "mlperf_log_summary.txt"
            if summary.is_file() and "Result is : VALID" not in summary.read_text():
                problems.append(f"{summary}: the performance run is not VALID")
            for name in ACCURACY_FILES:
                _need(problems, results / "accuracy" / name)
            _check_hash(problems, results / "accuracy" / "accuracy.txt", (full_logs or {}))
            measurements = sub / "measurements" / system / benchmark / scenario
            for name in ("user.conf", "README.md"):
                _need(problems, measurements / name)
            if measurements.is_dir() and not list(measurements.glob(f"{system}_*_{scenario}.json")):
                problems.append(f"{measurements}/{system}_<implementation>_{scenario}.json: missing measurements JSON")
            if base in suite.benchmarks:
                for test in suite.rule(base).audits:
                    if scenario in suite.audit_exempt_scenarios(test):
                        continue
                    audit_dir = sub / "compliance" / system / benchmark / scenario / test
                    _need(problems, audit_dir / "verify_performance.txt")
    return problems


def _check_system(problems: list[str], path: Path) -> None:
    if not _need(problems, path, "system description JSON"):
        return
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        problems.append(f"{path}: not JSON ({exc.msg})")
        return
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        problems.append(f"{path}: missing required fields {', '.join(missing)}")


def _check_hash(problems: list[str], accuracy_txt: Path, full_logs: dict[Path, Path]) -> None:
    if not accuracy_txt.is_file():
        return
    found = HASH.search(accuracy_txt.read_text())
    if not found:
        problems.append(f"{accuracy_txt}: no hash=<sha256 of the accuracy log> line")
        return
    full = full_logs.get(accuracy_txt)
    tree_log = accuracy_txt.parent / "mlperf_log_accuracy.json"
    if full is not None and full.is_file():
        if _sha256(full) != found.group(1):
            problems.append(f"{accuracy_txt}: hash does not match the accuracy log {full}")
    elif tree_log.is_file() and _sha256(tree_log) != found.group(1) and tree_log.stat().st_size > 16384:
        problems.append(f"{tree_log}: accuracy log is not truncated and does not match {accuracy_txt}'s hash")


def submission_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mlperf submission",
        description="Assemble one submission tree from finished runs (their report steps), then check it; "
        "or only check a tree with --check.",
    )
    p.add_argument("--workdir", type=Path, default=Path("mlperf-work"), help="work directory of the runs")
    p.add_argument("--runs", default="", help="comma-separated run names (default: every run with a report)")
    p.add_argument("--out", type=Path, help="where to write the tree (default <workdir>/submission)")
    p.add_argument("--check", type=Path, metavar="TREE", help="only check an existing v1.0 tree")
    args = p.parse_args(argv)
    if args.check:
        problems = check_v10(args.check)
        root = args.check
    else:
        runs = [r for r in args.runs.split(",") if r] or sorted(
            d.name for d in (args.workdir / "runs").glob("*") if (d / "submission" / "v1.0").is_dir()
        )
        if not runs:
            console.print(f"[red]error: {args.workdir}/runs: no run has a report yet[/]")
            return 2
        root = args.out or args.workdir / "submission"
        try:
            full_logs = assemble(args.workdir, runs, root)
        except FileNotFoundError as exc:
            console.print(f"[red]error: {exc}[/]")
            return 2
        problems = check_v10(root, full_logs)
        console.print(f"assembled {len(runs)} run(s) into {root}")
    for problem in problems:
        console.print(f"[red]{problem}[/]", soft_wrap=True)
    if problems:
        console.print(f"[red]{len(problems)} problem(s): the tree is not acceptable[/]")
        return 1
    console.print(f"[green]{root}: structure, accuracy hashes and system descriptions check out[/]")
    return 0
