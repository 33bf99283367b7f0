"""``mlperf submission``: one submission tree per round from the runs of that round, and checks.

Each run's ``report`` step writes its part of its round's tree under
``runs/<run>/submission/<round>/``; this merges the parts of every run of a round into
``<out>/<round>/`` and checks what that round's MLPerf submission checker checks of it: the
required files in that round's places, VALID runs with the round's seeds, accuracy logs
truncated with the full log's hash recorded, the compliance directories of the round's audits,
the calibration document, and the system description with exactly the round's fields. Every
problem names its file.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .artifacts import Workdir
from .fsutil import temp_path_for
from .loadgen.logs import detail_values
from .report import sha256
from .results import StepOutcome, write_termination_message
from .suites import SUITE_NAMES, Suite, load_suite

console = Console(stderr=True)
HASH = re.compile(r"^hash=([0-9a-f]{64})$", re.M)
PERF_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
ACCURACY_FILES = (*PERF_FILES, "accuracy.txt", "mlperf_log_accuracy.json")
IMPLEMENTATION_FIELDS = (
    "input_data_types",
    "retraining",
    "starting_weights_filename",
    "weight_data_types",
    "weight_transformations",
)
MAX_ACCURACY_LOG_BYTES = 10 * 1024  # what the checkers accept of a truncated log
SEED_KEYS = {"qsl": "effective_qsl_rng_seed", "sampleIndex": "effective_sample_index_rng_seed"}


def runs_by_round(workdir: Path, runs: list[str] | None = None) -> dict[str, list[str]]:
    """The runs with a report, grouped by the round their tree was written for."""
    wd = Workdir(workdir)
    names = runs or sorted(d.name for d in (workdir / "runs").glob("*") if d.is_dir())
    grouped: dict[str, list[str]] = {}
    for run in names:
        parts = [d.name for d in wd.submission(run).glob("*") if d.is_dir() and d.name in SUITE_NAMES]
        if not parts and runs:
            raise FileNotFoundError(
                f"{wd.submission(run)}: run {run} has no submission tree; run its report step first"
            )
        for suite in parts:
            grouped.setdefault(suite, []).append(run)
    return grouped


def assemble(workdir: Path, suite: str, runs: list[str], out: Path) -> dict[Path, Path]:
    """Merge the runs' trees of one round into ``out``; returns each accuracy.txt's full log."""
    wd = Workdir(workdir)
    full_logs: dict[Path, Path] = {}
    for run in runs:
        part = wd.submission(run) / suite
        for src in part.rglob("*"):
            if not src.is_file():
                continue
            dest = out / src.relative_to(part)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            if src.name == "accuracy.txt" and src.parent.parent.name != "TEST01":
                scenario = src.parent.parent.name
                full_logs[dest] = wd.harness_run(run, scenario, "AccuracyOnly") / "mlperf_log_accuracy.json"
    return full_logs


@dataclass
class Checker:
    """The checks of one round on one tree; ``problems`` names a file in each entry."""

    suite: Suite
    full_logs: dict[Path, Path]
    problems: list[str]

    def need(self, path: Path, what: str = "required file") -> bool:
        if not path.is_file():
            self.problems.append(f"{path}: missing {what}")
            return False
        return True

    def check(self, root: Path) -> list[str]:
        subs = [d for division in ("closed", "open") for d in (root / division).glob("*") if d.is_dir()]
        if not subs:
            return [f"{root}: no closed/<submitter> or open/<submitter> directory"]
        for sub in subs:
            self.check_submitter(sub)
        return self.problems

    def benchmarks(self) -> dict[str, str]:
        """The round's benchmark directory names -> our benchmark names."""
        names: dict[str, str] = {}
        for bench in self.suite.benchmarks:
            for cv in ("default", "high_accuracy"):
                names[self.suite.submission_benchmark(bench, cv)] = bench
        return names

    def check_submitter(self, sub: Path) -> None:
        layout = self.suite.submission.layout
        for doc in self.suite.submission.documents:
            self.need(sub / "documentation" / doc, "documentation file")
        known = self.benchmarks()
        for results in sorted((sub / "results").glob("*/*/*")):
            system, bdir, scenario = results.parts[-3:]
            if bdir not in known:
                self.problems.append(f"{results}: {bdir} is not a benchmark name of {self.suite.name}")
                continue
            self.check_system(sub / "systems" / f"{system}.json")
            self.check_performance(results / "performance" / "run_1")
            self.check_accuracy(results / "accuracy")
            if layout == "v1.0":
                meas, comp = (
                    sub / "measurements" / system / bdir / scenario,
                    sub / "compliance" / system / bdir / scenario,
                )
                implementation = next(iter(meas.glob(f"{system}_*_{scenario}.json")), None)
                if meas.is_dir() and implementation is None:
                    self.problems.append(f"{meas}/{system}_<implementation>_{scenario}.json: missing measurements JSON")
            else:
                meas, comp = results, results
                implementation = results / "measurements.json" if self.need(results / "measurements.json") else None
            for name in ("user.conf", "README.md"):
                self.need(meas / name)
            if implementation is not None:
                self.check_fields(implementation, IMPLEMENTATION_FIELDS)
            for test in self.suite.rule(known[bdir]).audits:
                if scenario not in self.suite.audit_exempt_scenarios(test):
                    self.check_audit(comp / test, test)

    def check_system(self, path: Path) -> None:
        rules = self.suite.submission
        data = self.check_fields(path, rules.systemFields, "system description JSON")
        if data is None:
            return
        unknown = sorted(set(data) - set(rules.systemFields))
        if unknown:
            self.problems.append(f"{path}: fields {', '.join(unknown)} are not part of {self.suite.name}")
        empty = [f for f in rules.meaningfulFields if f in data and data[f] in (0, "", None)]
        if empty:
            self.problems.append(f"{path}: fields {', '.join(empty)} need a meaningful (non-empty, non-zero) value")

    def check_fields(
        self, path: Path, fields: list[str] | tuple[str, ...], what: str = "file"
    ) -> dict[str, object] | None:
        if not self.need(path, what):
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            self.problems.append(f"{path}: not JSON ({exc.msg})")
            return None
        missing = [f for f in fields if f not in data]
        if missing:
            self.problems.append(f"{path}: missing required fields {', '.join(missing)}")
        return dict(data)

    def check_performance(self, run_dir: Path) -> None:
        for name in PERF_FILES:
            self.need(run_dir / name)
        summary, detail = run_dir / "mlperf_log_summary.txt", run_dir / "mlperf_log_detail.txt"
        if summary.is_file() and "Result is : VALID" not in summary.read_text():
            self.problems.append(f"{summary}: the performance run is not VALID")
        if detail.is_file():
            values = detail_values(detail)
            seeds = self.suite.loadgen.seeds.model_dump()
            for name, key in SEED_KEYS.items():
                if key in values and int(values[key]) != seeds[name]:
                    self.problems.append(f"{detail}: {key} {values[key]} is not {self.suite.name}'s {seeds[name]}")

    def check_accuracy(self, acc_dir: Path) -> None:
        for name in ACCURACY_FILES:
            self.need(acc_dir / name)
        self.check_truncated(acc_dir, self.full_logs.get(acc_dir / "accuracy.txt"))

    def check_truncated(self, acc_dir: Path, full: Path | None) -> None:
        """accuracy.txt records the full log's hash; the log beside it is truncated."""
        txt, log = acc_dir / "accuracy.txt", acc_dir / "mlperf_log_accuracy.json"
        if not txt.is_file() or not log.is_file():
            return
        found = HASH.search(txt.read_text())
        if not found:
            self.problems.append(f"{txt}: no hash=<sha256 of the full accuracy log> line")
        elif full is not None and full.is_file() and sha256(full) != found.group(1):
            self.problems.append(f"{txt}: hash does not match the accuracy log {full}")
        if log.stat().st_size > MAX_ACCURACY_LOG_BYTES:
            self.problems.append(f"{log}: not truncated ({log.stat().st_size} bytes)")

    def check_audit(self, test_dir: Path, test: str) -> None:
        self.need(test_dir / "verify_performance.txt")
        if test.startswith("TEST04-") or test in ("TEST01", "TEST04", "TEST05"):
            for name in PERF_FILES:
                self.need(test_dir / "performance" / "run_1" / name)
        if test == "TEST01":
            self.need(test_dir / "verify_accuracy.txt")
            self.need(test_dir / "accuracy" / "mlperf_log_accuracy.json")
            if self.suite.submission.layout != "v1.0" and self.need(test_dir / "accuracy" / "accuracy.txt"):
                self.check_truncated(test_dir / "accuracy", None)


def check_tree(root: Path, suite: str, full_logs: dict[Path, Path] | None = None) -> list[str]:
    """Problems of one round's tree, each naming its file."""
    return Checker(load_suite(suite), full_logs or {}, []).check(root)


def submission_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mlperf submission",
        description="Assemble one submission tree per round from the finished runs of that round (their report "
        "steps), then check each as that round's checker does; or only check a tree with --check.",
    )
    p.add_argument("--workdir", type=Path, default=Path("mlperf-work"), help="work directory of the runs")
    p.add_argument("--runs", default="", help="comma-separated run names (default: every run with a report)")
    p.add_argument("--out", type=Path, help="where to write the trees, one per round (default <workdir>/submission)")
    p.add_argument("--check", type=Path, metavar="TREE", help="only check an existing tree (of --round)")
    p.add_argument("--round", choices=SUITE_NAMES, default="v1.0", help="the round of the --check tree")
    p.add_argument("--tarball", type=Path, help="also write the assembled trees as this .tar.gz (atomically)")
    p.add_argument(
        "--no-fail",
        action="store_true",
        help="exit 0 once the trees are assembled, whatever the checks found (a campaign's Job: the findings "
        "go to its outcome, and a check that fails would fail again on a retry)",
    )
    args = p.parse_args(argv)
    if args.check:
        return _report({args.check: check_tree(args.check, args.round)})
    try:
        grouped = runs_by_round(args.workdir, [r for r in args.runs.split(",") if r] or None)
    except FileNotFoundError as exc:
        console.print(f"[red]error: {exc}[/]")
        return 2
    if not grouped:
        console.print(f"[red]error: {args.workdir}/runs: no run has a report yet[/]")
        return 2
    out = args.out or args.workdir / "submission"
    found: dict[Path, list[str]] = {}
    for suite, runs in sorted(grouped.items()):
        root = out / suite
        if root.exists():
            shutil.rmtree(root)  # a tree is rebuilt whole: nothing stale from an earlier assembly
        full_logs = assemble(args.workdir, suite, runs, root)
        console.print(f"{suite}: assembled {len(runs)} run(s) into {root}")
        found[root] = check_tree(root, suite, full_logs)
    if args.tarball:
        write_tarball(args.tarball, sorted(found))
        console.print(f"wrote {args.tarball}")
    code = _report(found)
    problems = [p for ps in found.values() for p in ps]
    runs_total = sum(len(r) for r in grouped.values())
    summary = f"{runs_total} run(s) in {len(found)} tree(s), {len(problems)} problem(s)"
    if args.tarball:
        summary += f", {args.tarball}"
    write_termination_message(
        StepOutcome(step="submission", ok=not problems, message="; ".join([summary, *problems[:5]])[:1000])
    )
    return 0 if args.no_fail else code


def write_tarball(path: Path, roots: list[Path]) -> None:
    """The trees as one .tar.gz, each under its round's name; written whole or not at all."""
    with temp_path_for(path) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for root in roots:
            tar.add(root, arcname=root.name)


def _report(found: dict[Path, list[str]]) -> int:
    bad = 0
    for root, problems in found.items():
        for problem in problems:
            console.print(f"[red]{problem}[/]", soft_wrap=True)
        if problems:
            bad += 1
            console.print(f"[red]{root}: {len(problems)} problem(s): the tree is not acceptable[/]")
        else:
            console.print(f"[green]{root}: structure, seeds, accuracy hashes and system description check out[/]")
    return 1 if bad else 0
