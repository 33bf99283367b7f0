"""``mlperf``: the harness step verbs, one process per step (a Job's command, or a local step).

Every verb takes ``--spec`` (a manifest or bare spec: path, YAML or inline JSON; $MLPERF_SPEC),
``--workdir`` ($MLPERF_WORKDIR, default ./mlperf-work) and ``--run`` ($MLPERF_RUN; default the
manifest's metadata.name, else "local"). A bad input ends with one red line naming the file and
exit status 2; the same line goes to the termination message, where the operator reads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from .errors import HarnessError
from .results import StepOutcome, write_termination_message

app = typer.Typer(
    name="mlperf",
    help="MLPerf Inference harness: download, preprocess, build engines, run LoadGen, audit, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

SpecOpt = Annotated[
    str,
    typer.Option(
        "--spec", envvar="MLPERF_SPEC", help="MLPerfRun manifest or bare spec: a YAML/JSON file, or inline JSON."
    ),
]
WorkdirOpt = Annotated[
    Path, typer.Option("--workdir", envvar="MLPERF_WORKDIR", help="Work directory (the run's PVC in a Job).")
]
RunOpt = Annotated[
    str | None,
    typer.Option("--run", envvar="MLPERF_RUN", help="Run name; default: the manifest's metadata.name or 'local'."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
ScenarioOpt = Annotated[str, typer.Option("--scenario", help="Offline, Server, SingleStream or MultiStream.")]
DEFAULT_WORKDIR = Path("./mlperf-work")


def _workspace(spec_text: str, workdir: Path, run: str | None, quiet: bool) -> object:
    from .spec import load_manifest
    from .workspace import Workspace

    try:
        manifest = load_manifest(spec_text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HarnessError(
            f"{spec_text if len(spec_text) < 120 else 'spec'}: invalid at {where}: {first['msg']}"
        ) from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{spec_text if len(spec_text) < 120 else 'spec'}: {exc}") from None
    from .sysinfo import localize

    name = run or (manifest.metadata.name if manifest.metadata else None) or "local"
    # Sized for the machine this step runs on, not the one the manifest asked a cluster for.
    return Workspace(localize(manifest.spec), workdir, name, quiet)


def _run_step(
    verb: str, spec: str, workdir: Path, run: str | None, quiet: bool, body: Callable[[object], StepOutcome]
) -> None:
    """Run a verb body, print its outcome, hand it to the operator; HarnessError -> exit 2."""
    try:
        ws = _workspace(spec, workdir, run, quiet)
        outcome = body(ws)
    except HarnessError as exc:
        err.print(f"[red]error: {escape(exc.message)}[/]", soft_wrap=True, highlight=False)
        write_termination_message(StepOutcome(step=verb, ok=False, message=exc.message[:1000]))
        raise typer.Exit(2) from None
    write_termination_message(outcome)
    colour = "yellow" if outcome.cacheHit else "green"
    out.print(f"[{colour}]{escape(outcome.message)}[/]", soft_wrap=True, highlight=False)


@app.command("download-data")
def download_data(
    spec: SpecOpt, workdir: WorkdirOpt = DEFAULT_WORKDIR, run: RunOpt = None, quiet: QuietOpt = False
) -> None:
    """Fetch (https, with resume; s3; a PVC path) or generate (synthetic) the dataset, checksum-verified."""
    from . import steps

    _run_step("download-data", spec, workdir, run, quiet, lambda ws: steps.download_data(ws))  # type: ignore[arg-type]


@app.command("download-model")
def download_model(
    spec: SpecOpt, workdir: WorkdirOpt = DEFAULT_WORKDIR, run: RunOpt = None, quiet: QuietOpt = False
) -> None:
    """Fetch the model (https/s3/PVC, sha256-checked) or generate the synthetic random-weight one."""
    from . import steps

    _run_step("download-model", spec, workdir, run, quiet, lambda ws: steps.download_model(ws))  # type: ignore[arg-type]


@app.command("preprocess")
def preprocess(
    spec: SpecOpt, workdir: WorkdirOpt = DEFAULT_WORKDIR, run: RunOpt = None, quiet: QuietOpt = False
) -> None:
    """Run the benchmark's MLPerf preprocessing into one memory-mappable array per input dtype."""
    from . import steps

    _run_step("preprocess", spec, workdir, run, quiet, lambda ws: steps.preprocess(ws))  # type: ignore[arg-type]


@app.command("build-engine")
def build_engine(
    spec: SpecOpt,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    run: RunOpt = None,
    scenario: Annotated[
        str | None,
        typer.Option("--scenario", help="Scenario whose batch size the engine is built for (default: the first)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Build the backend's engine for the spec's precision and batch size (TensorRT plan, ORT graph)."""
    from . import steps

    _run_step("build-engine", spec, workdir, run, quiet, lambda ws: steps.build_engine(ws, scenario))  # type: ignore[arg-type]


@app.command("run-harness")
def run_harness(
    spec: SpecOpt,
    scenario: ScenarioOpt,
    test_mode: Annotated[str, typer.Option("--test-mode", help="PerformanceOnly or AccuracyOnly.")] = "PerformanceOnly",
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    run: RunOpt = None,
    quiet: QuietOpt = False,
    retune: Annotated[
        bool,
        typer.Option("--retune", envvar="MLPERF_RETUNE", help="With spec.tune: probe again, ignoring a cached target."),
    ] = False,
) -> None:
    """Run LoadGen for one scenario and test mode; results go to the run's results/ and the termination log.
    With spec.tune, a performance run first finds its LoadGen target with short probe runs (or reuses it)."""
    from . import steps

    if test_mode not in ("PerformanceOnly", "AccuracyOnly"):
        err.print(f"[red]error: --test-mode {test_mode}: use PerformanceOnly or AccuracyOnly[/]")
        raise typer.Exit(2)
    _run_step("run-harness", spec, workdir, run, quiet, lambda ws: steps.run_harness(ws, scenario, test_mode, retune))  # type: ignore[arg-type]


@app.command("audit")
def audit(
    spec: SpecOpt,
    test: Annotated[
        str, typer.Option("--test", help="TEST01, TEST04 (current round), TEST04-A / TEST04-B / TEST05 (v1.0).")
    ],
    scenario: ScenarioOpt,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    run: RunOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run one compliance test in one scenario (audit.config in its log dir) and verify it."""
    from . import steps

    _run_step("audit", spec, workdir, run, quiet, lambda ws: steps.audit(ws, test, scenario))  # type: ignore[arg-type]


@app.command("report")
def report(spec: SpecOpt, workdir: WorkdirOpt = DEFAULT_WORKDIR, run: RunOpt = None, quiet: QuietOpt = False) -> None:
    """Parse the run's LoadGen logs and write its part of its round's submission tree."""
    from .report import run_report

    _run_step("report", spec, workdir, run, quiet, lambda ws: run_report(ws))  # type: ignore[arg-type]


def _delegate(module: str, func: str, ctx: typer.Context) -> None:
    """Hand the raw arguments to a command implemented elsewhere (imported only when used)."""
    try:
        target = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError):
        err.print(f"[red]error: {ctx.info_name}: not available in this build ({module}:{func} missing)[/]")
        raise typer.Exit(2) from None
    try:
        code = int(target(list(ctx.args)) or 0)
    except KeyboardInterrupt:  # click would turn it into "Aborted!" and exit 1
        err.print("\n[yellow]interrupted[/]")
        code = 130
    raise typer.Exit(code)


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("run", context_settings=_PASSTHROUGH, add_help_option=False)
def run_pipeline(ctx: typer.Context) -> None:
    """Run a whole MLPerfRun locally (the operator's pipeline, one process per step)."""
    # Placeholder contract: mlperf_harness.local.run_command(argv: list[str]) -> int (exit status).
    _delegate("mlperf_harness.local", "run_command", ctx)


@app.command("submission", context_settings=_PASSTHROUGH, add_help_option=False)
def submission(ctx: typer.Context) -> None:
    """Assemble the submission tree of finished runs."""
    # Placeholder contract: mlperf_harness.submission.submission_command(argv) -> int.
    _delegate("mlperf_harness.submission", "submission_command", ctx)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
