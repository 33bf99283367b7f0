"""The local runner: the operator's pipeline, run on this machine as one process per step.

Each step runs the very command line its Job would run (``mlperf <verb> ...``), with the work
directory in place of the PVC and the step's outcome written where a pod's termination message
would go. A step whose outcome is already recorded is skipped, so a run interrupted with Ctrl-C
resumes where it stopped when the same command is given again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import artifacts
from .backends import engine_version
from .errors import HarnessError
from .pipeline import Step, plan
from .results import TERMINATION_LOG_ENV, AuditResult, ScenarioResult, StepOutcome, verdict
from .results import collect as collect_outcomes
from .spec import MLPerfRunManifest, MLPerfRunSpec, load_manifest
from .sysinfo import localize

console = Console(stderr=True)
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "resnet50-offline.yaml"


# --- what to run -----------------------------------------------------------------------------


@dataclass
class V10Flags:
    """The v1.0 workflow's RUN_ARGS, as ``mlperf run`` takes them."""

    benchmarks: list[str]
    scenarios: list[str] = field(default_factory=lambda: ["Offline"])
    config_ver: str = "default"
    test_modes: list[str] = field(default_factory=lambda: ["PerformanceOnly", "AccuracyOnly"])
    fast: bool = False
    backend: str = "onnxruntime"
    precision: str | None = None
    batch_size: int | None = None
    min_duration_ms: int | None = None
    min_query_count: int | None = None
    target_qps: float | None = None
    expected_qps: float | None = None
    samples: int | None = None
    audits: list[str] | None = None

    def manifests(self) -> list[MLPerfRunManifest]:
        loadgen = {
            "minDurationMs": self.min_duration_ms,
            "minQueryCount": self.min_query_count,
            "targetQps": self.target_qps,
            "expectedQps": self.expected_qps,
        }
        out = []
        for bench in self.benchmarks:
            spec: dict[str, Any] = {
                "benchmark": bench,
                "scenarios": self.scenarios,
                "configVer": self.config_ver,
                "testModes": self.test_modes,
                "fast": self.fast,
                "backend": self.backend,
                "precision": self.precision,
                "batchSize": self.batch_size,
                "loadgen": {k: v for k, v in loadgen.items() if v is not None},
                "audits": self.audits,
                "storage": {"create": {}},  # not used locally; a cluster needs it
            }
            if self.samples:
                spec["dataset"] = {"synthetic": {"samples": self.samples}}
            name = "-".join([bench, *(s.lower() for s in self.scenarios)])
            out.append(
                MLPerfRunManifest.model_validate(
                    {"metadata": {"name": name}, "spec": {k: v for k, v in spec.items() if v is not None}}
                )
            )
        return out


def select(steps: list[Step], only: str | None) -> list[Step]:
    """All steps, or those of one verb together with every step they need."""
    if not only:
        return steps
    by_name = {s.name: s for s in steps}
    wanted = {s.name for s in steps if s.verb == only or s.name == only}
    if not wanted:
        verbs = sorted({s.verb for s in steps})
        raise HarnessError(f"--only {only}: no such step or verb in this run (verbs: {', '.join(verbs)})")
    stack = list(wanted)
    while stack:
        for need in by_name[stack.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                stack.append(need)
    return [s for s in steps if s.name in wanted]


# --- running ---------------------------------------------------------------------------------


@dataclass
class LocalRun:
    manifest: MLPerfRunManifest
    workdir: Path
    sources: Path | None = None
    retune: bool = False  # with spec.tune: the harness steps probe again, ignoring a cached target

    @property
    def name(self) -> str:
        return self.manifest.metadata.name

    @property
    def steps_dir(self) -> Path:
        return artifacts.Workdir(self.workdir).run(self.name) / "steps"

    def outcome_path(self, step: Step) -> Path:
        return self.steps_dir / f"{step.name}.json"

    def outcome(self, step: Step) -> StepOutcome | None:
        path = self.outcome_path(step)
        if not path.exists():
            return None
        return StepOutcome.model_validate_json(path.read_text())

    def command(self, step: Step) -> list[str]:
        return [*step.command, "--run", self.name, "--workdir", str(self.workdir)]

    def env(self, step: Step, spec: MLPerfRunSpec) -> dict[str, str]:
        env = {
            **os.environ,
            "MLPERF_SPEC": spec.model_dump_json(exclude_defaults=True),
            "MLPERF_RUN": self.name,
            "MLPERF_WORKDIR": str(self.workdir),
            TERMINATION_LOG_ENV: str(self.outcome_path(step)) + ".part",
        }
        if self.sources:
            env["MLPERF_SOURCES_ROOT"] = str(self.sources)
        if self.retune:
            env["MLPERF_RETUNE"] = "1"
        return env


def run_pipeline(run: LocalRun, only: str | None = None) -> tuple[list[ScenarioResult], list[AuditResult], bool]:
    """Run (or resume) every step; returns results, audits, and whether every step succeeded."""
    spec = localize(run.manifest.spec)
    steps = select(plan(spec, engine_version(spec.backend)), only)
    run.steps_dir.mkdir(parents=True, exist_ok=True)
    logs = run.steps_dir
    mlperf = Path(sys.executable).parent / "mlperf"
    if spec.synthetic:
        console.print(
            "[yellow]No dataset or model configured: using synthetic data and a generated model. "
            "Results are SYNTHETIC, not comparable with real submissions.[/]"
        )
    console.print(
        f"[bold]{run.name}[/]: {spec.benchmark} {','.join(spec.scenarios)} on {spec.system.gpuProduct} "
        f"({spec.backend}), {len(steps)} steps, work dir {run.workdir}"
    )
    ok = True
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<34}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        overall = progress.add_task("[bold]pipeline", total=len(steps), state="")
        for step in steps:
            task = progress.add_task(step.name, total=1, state="")
            done = run.outcome(step)
            if done is not None and done.ok:
                progress.update(task, completed=1, state="[dim]done earlier[/]")
                progress.advance(overall)
                continue
            progress.update(task, state="running")
            start = time.monotonic()
            log = logs / f"{step.name}.log"
            rc = _execute([str(mlperf), *run.command(step)[1:]], run.env(step, spec), log)
            part = Path(str(run.outcome_path(step)) + ".part")
            if rc == 0:
                if part.exists():
                    part.replace(run.outcome_path(step))  # recorded last: a resumed run skips this step
                else:
                    run.outcome_path(step).write_text(StepOutcome(step=step.verb, ok=True).to_message())
                outcome = run.outcome(step)
                hit = " (cached)" if outcome and outcome.cacheHit else ""
                progress.update(task, completed=1, state=f"[green]ok{hit}[/] {time.monotonic() - start:.0f}s")
                progress.advance(overall)
            else:
                ok = False
                progress.update(task, state=f"[red]failed (exit {rc})[/]")
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                console.print(f"[red]step {step.name} failed; last lines of {log}:[/]\n{tail}")
                break
    results, audits = collect(run, steps)
    return results, audits, ok


def _execute(cmd: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise


def collect(run: LocalRun, steps: list[Step]) -> tuple[list[ScenarioResult], list[AuditResult]]:
    return collect_outcomes(run.outcome(step) for step in steps)


# --- the end of a run ------------------------------------------------------------------------


def _ms(ns: int | None) -> str:
    return f"{ns / 1e6:.2f}" if ns is not None else "-"


_VERDICT = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]", "NOT JUDGED": "[yellow]NOT JUDGED[/]"}


def results_table(run: str, results: list[ScenarioResult], audits: list[AuditResult]) -> Table:
    table = Table(title=f"MLPerf results: {run}", title_justify="left")
    for column in ("Scenario", "Mode", "Result", "Samples/s", "p99 ms", "Accuracy (target)", "Audits", "Data"):
        table.add_column(column, justify="right" if column in ("Samples/s", "p99 ms") else "left")
    for r in results:
        if r.testMode == "PerformanceOnly":
            verdict = "[green]VALID[/]" if r.valid else "[red]INVALID[/]"
            accuracy = "-"
            audit_text = " ".join(f"{a.test} {_VERDICT[a.verdict]}" for a in audits if a.scenario == r.scenario)
        else:
            verdict = "[green]PASS[/]" if r.accuracyPassed else "[red]FAIL[/]"
            accuracy = f"{r.accuracy:.3f} (>= {r.accuracyTarget:.3f})" if r.accuracy is not None else "-"
            audit_text = ""
        table.add_row(
            r.scenario,
            "performance" if r.testMode == "PerformanceOnly" else "accuracy",
            verdict,
            f"{r.samplesPerSecond:,.1f}" if r.samplesPerSecond is not None else "-",
            _ms(r.latencyNs.p99 if r.latencyNs else None),
            accuracy,
            audit_text,
            "[yellow]SYNTHETIC[/]" if r.synthetic else "real",
        )
    return table


def print_summary(run: LocalRun, results: list[ScenarioResult], audits: list[AuditResult]) -> None:
    out = Console(width=None if sys.stdout.isatty() else 150)
    out.print(results_table(run.name, results, audits))
    for r in results:
        if r.logDir:
            out.print(f"  logs {r.scenario} {r.testMode}: {run.workdir / r.logDir}")
    for r in results:
        if r.tuning is not None and r.testMode == "PerformanceOnly":
            out.print(f"  {r.scenario}: {r.tuning.describe()}", soft_wrap=True, highlight=False)
    for a in audits:
        if a.verdict != "PASS":
            colour = "red" if a.verdict == "FAIL" else "yellow"
            out.print(f"  [{colour}]{a.test} {a.scenario} {a.verdict}[/]: {a.details}", soft_wrap=True)
    out.print(f"  step logs and outcomes: {run.steps_dir}")


def passed(results: list[ScenarioResult], audits: list[AuditResult]) -> bool:
    return verdict(results, audits).passed


def load_runs(manifest: str | None, flags: V10Flags | None) -> list[MLPerfRunManifest]:
    if manifest:
        return [load_manifest(manifest)]
    if flags is not None:
        return flags.manifests()
    return [load_manifest(QUICKSTART)]


# --- the command line ------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlperf run",
        description="Run a whole MLPerfRun on this machine: the operator's pipeline, one process per step. "
        "Give a manifest (-f), or the v1.0 workflow's flags, or nothing for the quickstart "
        "(examples/resnet50-offline.yaml). Re-running the same command resumes after the last completed step.",
    )
    p.add_argument("-f", "--filename", help="MLPerfRun manifest (the one you would kubectl apply)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("MLPERF_WORKDIR", "mlperf-work")),
        help="work directory, laid out like the run's PVC (default ./mlperf-work)",
    )
    p.add_argument("--sources", type=Path, help="directory standing in for PVC sources: <dir>/<claimName>/<path>")
    p.add_argument("--only", metavar="VERB", help="run only the steps of this verb (and what they need)")
    v10 = p.add_argument_group("v1.0 workflow flags (RUN_ARGS)")
    v10.add_argument("--benchmarks", type=_csv, help="comma-separated, e.g. resnet50")
    v10.add_argument("--scenarios", type=_csv, default=None, help="e.g. Offline,Server")
    v10.add_argument("--config_ver", "--config-ver", default="default", help="default or high_accuracy")
    v10.add_argument(
        "--test_mode",
        "--test-mode",
        type=_csv,
        default=None,
        help="PerformanceOnly, AccuracyOnly, or both comma-separated (default both)",
    )
    v10.add_argument("--fast", action="store_true", help="60 s runs, min query count 1: not submittable")
    v10.add_argument("--backend", default="onnxruntime", help="onnxruntime, pytorch, tensorrt or null")
    v10.add_argument("--precision", help="fp32, fp16, bf16, int8, fp8")
    v10.add_argument("--batch_size", "--gpu_batch_size", type=int)
    v10.add_argument("--min_duration", type=int, help="minimum duration in ms")
    v10.add_argument("--min_query_count", type=int)
    v10.add_argument("--server_target_qps", "--target_qps", type=float)
    v10.add_argument("--offline_expected_qps", "--expected_qps", type=float)
    v10.add_argument("--samples", type=int, help="synthetic dataset size")
    v10.add_argument("--audits", type=_csv, default=None, help="audits to run; default: what the suite requires")
    p.add_argument(
        "--tune",
        action="store_true",
        help="find the LoadGen targets (Server target QPS, Offline expected QPS, stream latencies) with short "
        "probe runs before each performance run (spec.tune); a cached finding for the same system and engine "
        "is reused",
    )
    p.add_argument("--retune", action="store_true", help="with --tune: probe again, ignoring a cached finding")
    return p


def _flags(args: argparse.Namespace) -> V10Flags | None:
    if not args.benchmarks:
        return None
    flags = V10Flags(
        benchmarks=args.benchmarks,
        config_ver=args.config_ver,
        fast=args.fast,
        backend=args.backend,
        precision=args.precision,
        batch_size=args.batch_size,
        min_duration_ms=args.min_duration,
        min_query_count=args.min_query_count,
        target_qps=args.server_target_qps,
        expected_qps=args.offline_expected_qps,
        samples=args.samples,
        audits=args.audits,
    )
    if args.scenarios:
        flags.scenarios = args.scenarios
    if args.test_mode:
        flags.test_modes = args.test_mode
    return flags


def run_command(argv: list[str]) -> int:
    """``mlperf run``: exit 0 when every result is VALID, accurate enough and passes its audits."""
    args = _parser().parse_args(argv)
    try:
        runs = load_runs(args.filename, _flags(args))
    except (OSError, ValueError) as exc:
        console.print(f"[red]error: {args.filename or 'flags'}: {' '.join(str(exc).split())}[/]")
        return 2
    if args.tune or args.retune:
        runs = [m.model_copy(update={"spec": m.spec.model_copy(update={"tune": True})}) for m in runs]
    try:
        return _run_all(runs, args)
    except KeyboardInterrupt:  # at any moment, also while the table prints: the same exit, the same resume
        console.print("\n[yellow]interrupted: run the same command again to resume[/]")
        return 130


def _run_all(runs: list[MLPerfRunManifest], args: argparse.Namespace) -> int:
    status = 0
    for manifest in runs:
        run = LocalRun(manifest, args.workdir.resolve(), args.sources, args.retune)
        try:
            results, audits, ok = run_pipeline(run, args.only)
        except HarnessError as exc:
            console.print(f"[red]error: {exc.message}[/]")
            return 2
        if results:
            print_summary(run, results, audits)
        if not ok:
            status = 1
        elif not args.only and not (judged := verdict(results, audits)).passed:
            console.print("[red]a result is INVALID, misses its accuracy target, or fails an audit[/]")
            for reason in judged.reasons:
                console.print(f"  [red]{reason}[/]", soft_wrap=True, highlight=False)
            status = 1
    return status
