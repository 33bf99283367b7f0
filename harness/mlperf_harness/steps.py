"""The step verbs as functions: what the CLI, the operator's Jobs and the local runner execute.

Each verb is idempotent: its output directory gets a ``.complete`` marker (what was produced,
with checksums) as the very last write, and a rerun that finds the marker returns at once.
run-harness and audit also report a StepOutcome: as ``<run>/results/<name>.json`` always, and
as the termination message (MLPERF_TERMINATION_LOG or /dev/termination-log) for the operator.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import cast

from . import artifacts, audits
from .backends import Backend, backend_class, get_backend
from .backends.null import NullBackend
from .benchmarks.base import MODEL
from .config import HarnessConfig, build_config
from .errors import HarnessError
from .fsutil import atomic_write_json, atomic_write_text, read_marker, write_marker
from .loadgen.logs import Summary, detail_errors, parse_summary
from .loadgen.pool import InstancePool, shared
from .results import (
    AuditResult,
    AuditVerdict,
    ProducedArtifact,
    ScenarioResult,
    StepOutcome,
    Tuning,
    collect,
    write_termination_message,
)
from .samples import SampleStore
from .suites import Scenario, load_suite
from .workspace import Workspace

SUMMARY, DETAIL, ACC_LOG = "mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json"
SYNTHETIC_NOTE = "SYNTHETIC: generated data and/or a random-weight model; not an MLPerf result"


def _produced(artifact: artifacts.Artifact) -> ProducedArtifact:
    return ProducedArtifact(kind=artifact.kind, key=artifact.key, inputs=artifact.inputs)


def _cached(step: str, ws: Workspace, artifact: artifacts.Artifact) -> StepOutcome | None:
    directory = ws.workdir.artifact(artifact)
    marker = read_marker(directory)
    if marker is None:
        return None
    message = f"{step}: already complete ({directory})"
    return StepOutcome(step=step, ok=True, cacheHit=True, message=message, artifact=_produced(artifact))


def emit(ws: Workspace, outcome: StepOutcome, name: str) -> StepOutcome:
    """Store the outcome in the run's results and hand it to the operator."""
    atomic_write_text(ws.results_dir / f"{name}.json", outcome.model_dump_json(indent=2))
    write_termination_message(outcome)
    return outcome


def stored_outcomes(results_dir: Path) -> tuple[list[ScenarioResult], list[AuditResult]]:
    """Every result and audit verdict the run's steps recorded (the report's own file aside)."""
    files = [f for f in sorted(results_dir.glob("*.json")) if not f.name.startswith("report")]
    return collect(StepOutcome.model_validate_json(f.read_text()) for f in files)


# --- download-data / download-model / preprocess / build-engine ------------------------------


def download_data(ws: Workspace) -> StepOutcome:
    out = ws.dataset_dir
    if hit := _cached("download-data", ws, ws.dataset):
        return hit
    out.mkdir(parents=True, exist_ok=True)
    facts = ws.bench.prepare_dataset(ws.spec.dataset, out, size=artifacts.model_size(ws.spec), quiet=ws.quiet)
    files = [p for p in (out / "dataset.json",) if p.exists()]
    write_marker(out, "download-data", files, facts=facts)
    kind = "synthetic " if facts.get("synthetic") else ""
    message = f"{kind}dataset ready: {facts.get('count')} samples"
    return StepOutcome(step="download-data", ok=True, message=message, artifact=_produced(ws.dataset))


def download_model(ws: Workspace) -> StepOutcome:
    out = ws.model_dir
    if hit := _cached("download-model", ws, ws.model):
        return hit
    out.mkdir(parents=True, exist_ok=True)
    path = ws.bench.prepare_model(ws.spec.model, out, quiet=ws.quiet)
    synthetic = ws.spec.model.synthetic
    size = ws.bench.size_note(synthetic.size) if synthetic is not None else None
    write_marker(out, "download-model", [path], synthetic=synthetic is not None, size=size)
    note = f" (synthetic random-weight model, {size})" if size else ""
    message = f"model ready: {path.name}{note}"
    return StepOutcome(step="download-model", ok=True, message=message, artifact=_produced(ws.model))


def preprocess(ws: Workspace) -> StepOutcome:
    out = ws.preprocessed_dir
    if hit := _cached("preprocess", ws, ws.preprocessed):
        return hit
    ws.require(ws.dataset_dir, "dataset", "download-data")
    out.mkdir(parents=True, exist_ok=True)
    variant = artifacts.input_dtype_of(ws.spec)
    files = ws.bench.preprocess(ws.dataset_dir, out, variant, size=artifacts.model_size(ws.spec), quiet=ws.quiet)
    store = SampleStore(out, ws.bench.inputs(variant))
    write_marker(out, "preprocess", files, count=store.count, synthetic=bool(store.facts.get("synthetic")))
    message = f"preprocessed {store.count} samples ({variant})"
    return StepOutcome(step="preprocess", ok=True, message=message, artifact=_produced(ws.preprocessed))


def build_engine(ws: Workspace, scenario: str | None = None) -> StepOutcome:
    if ws.spec.backend == "null":
        return StepOutcome(step="build-engine", ok=True, message="null backend: no engine to build")
    scenario = scenario or ws.spec.scenarios[0]
    made = ws.engine(scenario)
    out = ws.workdir.artifact(made)
    if hit := _cached("build-engine", ws, made):
        return hit
    ws.require(ws.model_dir, "model", "download-model")
    cls = backend_class(ws.spec.backend)
    ok, why = cls.available()
    if not ok:
        raise HarnessError(f"{ws.spec.backend}: cannot build an engine here: {why}")
    out.mkdir(parents=True, exist_ok=True)
    spec = ws.spec
    builder = cls()
    builder.configure(build_config(spec, cast(Scenario, scenario)))
    batch, precision = artifacts.batch_size_of(spec, scenario), artifacts.precision_of(spec)
    inputs = ws.bench.inputs(artifacts.input_dtype_of(spec))
    if precision in artifacts.CALIBRATED:  # activation ranges from the benchmark's calibration samples
        builder.calibration_batches = ws.bench.calibration_batches(ws.dataset_dir, ws.samples())  # type: ignore[attr-defined]
    engines = {
        part: builder.build_engine(path, out, batch, precision, inputs)
        for part, path in ws.bench.model_files(ws.model_dir).items()
    }
    # The engines and what the backend wrote beside them (a compile cache), each checksummed; a
    # part the backend runs as it is (the model itself) is not copied.
    built = {part: e.name for part, e in engines.items() if e.parent == out}
    files = sorted(f for f in out.iterdir() if f.is_file() and not f.name.startswith(".")) if built else []
    write_marker(out, "build-engine", files, engines=built, backend=cls.name, version=cls.version())
    names = ", ".join(e.name for e in engines.values())
    return StepOutcome(step="build-engine", ok=True, message=f"engine ready: {names}", artifact=_produced(made))


# --- run-harness ---------------------------------------------------------------------------


def _backend_factory(ws: Workspace, mode: str) -> Callable[[], Backend]:
    def make() -> Backend:
        if ws.spec.backend == "null":
            b: Backend = NullBackend(ws.bench.outputs, ws.bench.inputs(artifacts.input_dtype_of(ws.spec)))
        else:
            b = get_backend(ws.spec.backend)
        wrap = ws.perf_backend_wrapper
        if wrap is not None and mode == "PerformanceOnly":
            b = wrap(b)  # type: ignore[operator]
        return b

    return make


def _clean(log_dir: Path) -> None:
    """Remove a crashed attempt's logs so nothing stale is read as this run's."""
    if log_dir.exists():
        for f in log_dir.glob("mlperf_log_*"):
            f.unlink()


def _execute(
    ws: Workspace,
    cfg: HarnessConfig,
    mode: str,
    log_dir: Path,
    audit: str | None = None,
    engine_scenario: str | None = None,
    pool: InstancePool | None = None,
) -> tuple[Summary | None, list[str], str, str]:
    """One LoadGen run of ``cfg``; ``engine_scenario``: whose engine runs it (a tuner's Offline probe
    runs the Server's), by default the config's own scenario; ``pool``: instances kept loaded
    between runs (the tuner's)."""
    from .loadgen.runner import run_loadgen

    if ws.spec.backend != "null":
        ok, why = backend_class(ws.spec.backend).available()
        if not ok:
            raise HarnessError(f"{ws.spec.backend}: not usable here: {why}")
    ws.require(ws.preprocessed_dir, "preprocessed data", "preprocess")
    engine = engine_scenario or cfg.scenario
    models = ws.model_paths(engine) if ws.spec.backend != "null" else {MODEL: Path("/dev/null")}
    _clean(log_dir)
    factory = _backend_factory(ws, mode)
    out = run_loadgen(cfg, mode, log_dir, ws.bench, ws.preprocessed_dir, models, factory, audit, pool)
    errors = out.errors + detail_errors(log_dir / DETAIL)
    summary = parse_summary(log_dir / SUMMARY) if mode == "PerformanceOnly" else None
    return summary, errors, out.device, out.backend


def _config(
    ws: Workspace, scenario: str, probe: bool, retune: bool = False, pool: InstancePool | None = None
) -> tuple[HarnessConfig, Tuning | None]:
    """The scenario's config; with spec.tune, the tuner's finding in it: found now (``probe``: a
    performance run, its probes on ``pool``'s instances) or the cached one (an accuracy run or
    audit never probes)."""
    if not ws.spec.tune:
        return build_config(ws.spec, scenario), None  # type: ignore[arg-type]
    from . import tune

    found = tune.tune(ws, scenario, retune=retune, pool=pool) if probe else tune.cached(ws, scenario)
    return tune.tuned_config(ws.spec, scenario, found), found


def run_harness(
    ws: Workspace, scenario: str, mode: str, retune: bool = False, pool: InstancePool | None = None
) -> StepOutcome:
    """One scenario and mode through LoadGen, its result judged and stored; with spec.tune, the
    tuner's probes first, on the instances the run then uses (``pool``'s, or its own)."""
    name = f"{scenario}-{mode}"
    log_dir = ws.harness_dir(scenario, mode)
    if read_marker(log_dir) is not None and (ws.results_dir / f"{name}.json").is_file():
        stored = StepOutcome.model_validate_json((ws.results_dir / f"{name}.json").read_text())
        hit = stored.model_copy(update={"cacheHit": True, "message": f"{name}: already complete"})
        write_termination_message(hit)
        return hit
    if scenario not in ws.spec.scenarios:
        raise HarnessError(f"scenario {scenario} is not in the spec's scenarios ({', '.join(ws.spec.scenarios)})")
    probe = mode == "PerformanceOnly"
    with shared(pool, ws.spec.tune and probe) as instances:
        cfg, tuning = _config(ws, scenario, probe, retune, instances)
        summary, errors, device, backend = _execute(ws, cfg, mode, log_dir, pool=instances)
    result = ScenarioResult(
        scenario=scenario,
        testMode=mode,
        synthetic=cfg.synthetic,
        device=device,
        backend=backend,
        logDir=ws.rel(log_dir),
        tuning=tuning,
    )
    rule = load_suite(cfg.suite).rule(cfg.benchmark).accuracy
    if summary is not None:
        valid = summary.valid and not _over_bound(cfg, summary)
        result = result.model_copy(
            update={
                "valid": valid,
                "resultValidity": summary.validity
                if valid or not summary.valid
                else "INVALID (over the round's bound)",
                "invalidReason": "" if valid else _invalid_reason(cfg, summary),
                "samplesPerSecond": summary.throughput(),
                "latencyNs": summary.latency_ns(),
            }
        )
        why = f" ({result.invalidReason})" if result.invalidReason else ""
        message = f"{scenario} {mode}: {result.resultValidity}{why}, {summary.throughput() or 0:.1f} samples/s"
    else:
        report = ws.bench.accuracy(log_dir / ACC_LOG, ws.preprocessed_dir)
        target = rule.threshold(ws.spec.configVer)
        header = f"# {SYNTHETIC_NOTE}\n" if cfg.synthetic else ""
        atomic_write_text(log_dir / "accuracy.txt", f"{header}{report.line}\n")
        print(report.line)
        result = result.model_copy(
            update={
                "accuracy": report.value,
                "accuracyMetric": rule.metric,
                "accuracyTarget": round(target, 4),
                "accuracyPassed": report.value >= target,
            }
        )
        message = f"{scenario} {mode}: {report.line}"
    result = result.model_copy(update={"submittable": cfg.submittable and not errors})
    if errors:
        message += f"; LoadGen/SUT errors: {errors[0][:200]}"
    if tuning is not None:
        message += f"; {tuning.describe()}"
    if cfg.synthetic:
        message += " [synthetic]"
    outcome = StepOutcome(step="run-harness", ok=True, message=message, results=[result])
    emit(ws, outcome, name)
    atomic_write_json(log_dir / "harness-config.json", json.loads(cfg.model_dump_json()))
    write_marker(log_dir, "run-harness", [p for p in (log_dir / SUMMARY, log_dir / DETAIL) if p.exists()])
    return outcome


def _invalid_reason(cfg: HarnessConfig, s: Summary) -> str:
    """The checks of LoadGen's summary that failed, in its words, or the round's bound."""
    checks = {
        "min duration not met: the samples issued took less than the minimum duration; raise expectedQps "
        "(Offline) or targetQps (Server)": s.min_duration_met,
        "min queries not met": s.min_queries_met,
        "early stopping not met": s.early_stopping_met,
    }
    failed = [what for what, met in checks.items() if met is False]
    if _over_bound(cfg, s):
        failed.append(f"p99 latency over the round's bound of {(cfg.latencyBoundNs or 0) / 1e6:.0f} ms")
    return "; ".join(failed) or "LoadGen reported INVALID (see mlperf_log_summary.txt)"


def _over_bound(cfg: HarnessConfig, s: Summary) -> bool:
    """v1.0 MultiStream: LoadGen 6 has no per-round bound for it, so the harness checks p99."""
    return cfg.latencyBoundNs is not None and (s.latency.get("p99") or 0) > cfg.latencyBoundNs


# --- audit -----------------------------------------------------------------------------------


def audit(ws: Workspace, test: str, scenario: str) -> StepOutcome:
    name = f"{test}-{scenario}"
    adir = ws.audit_dir(test, scenario)
    stored_path = ws.results_dir / f"{name}.json"
    if read_marker(adir) is not None and stored_path.is_file():
        stored = StepOutcome.model_validate_json(stored_path.read_text())
        hit = stored.model_copy(update={"cacheHit": True, "message": f"{name}: already complete"})
        write_termination_message(hit)
        return hit
    suite = load_suite(ws.spec.suite)
    if test in ("TEST04-A", "TEST04-B", "TEST05") and suite.loadgen.compiledIn:
        raise HarnessError(f"{test} is not a compliance test of suite {suite.name} (use TEST04)")
    if test == "TEST04" and not suite.loadgen.compiledIn:
        raise HarnessError(f"suite {suite.name} runs TEST04 as TEST04-A and TEST04-B")
    cfg, _ = _config(ws, scenario, probe=False)
    ref_dir = ws.harness_dir(scenario, "PerformanceOnly")
    ref = parse_summary(ref_dir / SUMMARY) if (ref_dir / SUMMARY).is_file() else None
    threshold = suite.auditThresholds.get(test.split("-")[0], 0.10)

    if test in ("TEST04-A", "TEST04-B"):
        a, b = (_audit_run(ws, cfg, t, scenario) for t in ("TEST04-A", "TEST04-B"))
        timing = audits.verify_test04_pair(a, b)
        for t in ("TEST04-A", "TEST04-B"):
            atomic_write_text(ws.audit_dir(t, scenario) / "verify_performance.txt", timing.text)
    else:
        if ref is None:
            raise HarnessError(f"{ref_dir / SUMMARY}: missing; run the {scenario} PerformanceOnly harness first")
        got = _audit_run(ws, cfg, test, scenario)
        if test == "TEST04":
            timing = audits.verify_test04_single(ref, got, threshold)
        else:
            timing = audits.verify_performance(test, ref, got, threshold, suite.loadgen.compiledIn)
        atomic_write_text(adir / "verify_performance.txt", timing.text)
    verdict, details = _verdict(cfg, timing)
    if test == "TEST01":
        acc = _test01_accuracy(ws, scenario, adir)
        verdict = "FAIL" if not acc.passed else verdict
        details = f"{acc.details}; {details}"
    result = AuditResult(test=test, scenario=scenario, verdict=verdict, details=details[:300], synthetic=cfg.synthetic)
    msg = f"{test} {scenario}: {verdict} ({details})"
    outcome = StepOutcome(step="audit", ok=True, message=msg[:500], audits=[result])
    emit(ws, outcome, name)
    write_marker(adir, "audit", [p for p in adir.glob("verify_*.txt")], verdict=verdict)
    return outcome


def _verdict(cfg: HarnessConfig, timing: audits.Verdict) -> tuple[AuditVerdict, str]:
    """The official timing verdict; in a shortened run, a miss within noise is not judged."""
    if timing.passed:
        return "PASS", timing.details
    if cfg.shortened and timing.within_noise():
        why = (
            f"not judged: a {cfg.loadgen.minDurationMs / 1000:g} s run (the round's minimum is longer) varies "
            f"by more than the band on a shared machine; a full-length run judges it ({timing.details})"
        )
        return "NOT JUDGED", why
    return "FAIL", timing.details


def _audit_run(ws: Workspace, cfg: HarnessConfig, test: str, scenario: str) -> Summary:
    """LoadGen under one audit.config; logs in <audit>/performance/run_1 (reused when complete)."""
    log_dir = ws.audit_dir(test, scenario) / "performance" / "run_1"
    if read_marker(log_dir) is None:
        summary, _, _, _ = _execute(ws, cfg, "PerformanceOnly", log_dir, audit=test)
        write_marker(log_dir, f"audit {test}", [log_dir / SUMMARY, log_dir / DETAIL])
        assert summary is not None
        return summary
    return parse_summary(log_dir / SUMMARY)


def _test01_accuracy(ws: Workspace, scenario: str, adir: Path) -> audits.Verdict:
    """Logged outputs vs the accuracy run; on mismatch, the official fallback compares the
    accuracy of the logged subset against the accuracy run on the same samples (within 1 %)."""
    ref_log = ws.harness_dir(scenario, "AccuracyOnly") / ACC_LOG
    perf_log = adir / "performance" / "run_1" / ACC_LOG
    acc_dir = adir / "accuracy"
    acc_dir.mkdir(parents=True, exist_ok=True)
    if perf_log.is_file():
        shutil.copyfile(perf_log, acc_dir / ACC_LOG)
    verdict = audits.verify_accuracy(ref_log, acc_dir / ACC_LOG)
    text = verdict.text
    if not verdict.passed:
        logged = json.loads((acc_dir / ACC_LOG).read_text())
        idxs = {int(e["qsl_idx"]) for e in logged}
        subset = [e for e in json.loads(ref_log.read_text()) if int(e["qsl_idx"]) in idxs]
        atomic_write_text(acc_dir / "baseline_accuracy.json", json.dumps(subset))
        base = ws.bench.accuracy(acc_dir / "baseline_accuracy.json", ws.preprocessed_dir)
        test = ws.bench.accuracy(acc_dir / ACC_LOG, ws.preprocessed_dir)
        atomic_write_text(acc_dir / "baseline_accuracy.txt", base.line + "\n")
        atomic_write_text(acc_dir / "compliance_accuracy.txt", test.line + "\n")
        ok = test.value >= base.value * 0.99
        text += f"baseline {base.line}\ncompliance {test.line}\nfallback: {'TEST PASS' if ok else 'TEST FAIL'}\n"
        verdict = audits.Verdict(ok, text, verdict.details + (" (fallback pass)" if ok else ""))
    atomic_write_text(adir / "verify_accuracy.txt", text)
    return verdict
