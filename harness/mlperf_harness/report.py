"""report: the run's LoadGen logs -> results models, and the run's part of a submission tree in
the layout of the run's own round (``suites/<round>.yaml``, ``submission.layout``):

v1.0: <division>/<submitter>/{systems/<sys>.json, code/<bench>/<impl>/, measurements/<sys>/<bench>/
      <scenario>/{<sys>_<impl>_<scenario>.json, README.md, user.conf, mlperf.conf},
      results/<sys>/<bench>/<scenario>/{performance/run_1, accuracy}, compliance/<sys>/<bench>/<scenario>/TEST0x}
v6.1: <division>/<submitter>/{systems/<sys>.json, src/<bench>/<impl>/, documentation/calibration.md,
      results/<sys>/<bench>/<scenario>/{README.md, user.conf, measurements.json, performance/run_1,
      accuracy, TEST01, TEST04}}

Accuracy logs are truncated as the round's truncation tool does it (the head and the tail kept,
``hash=<sha256 of the full log>`` appended to the accuracy.txt beside them); the full logs stay
in the run's directory, where the README's accuracy command reads them.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from . import artifacts
from .backends import backend_class
from .fsutil import atomic_write_json, atomic_write_text, staging_dir
from .loadgen.logs import parse_summary
from .results import AuditResult, ScenarioResult, StepOutcome, verdict
from .steps import ACC_LOG, DETAIL, SUMMARY, SYNTHETIC_NOTE, stored_outcomes
from .suites import Suite, load_suite
from .sysinfo import default_system_name, describe
from .workspace import Workspace


def accuracy_txt(log_dir: Path) -> str:
    """accuracy.txt of a submission: the accuracy script's line, then the full log's hash."""
    lines = (log_dir / "accuracy.txt").read_text().splitlines()
    return "\n".join([*lines, f"hash={sha256(log_dir / ACC_LOG)}"]) + "\n"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def truncate_log(src: Path, dst: Path, keep: int) -> None:
    """The truncation tool's cut: ``keep`` characters from each end around a "..." line; a log
    shorter than ``keep`` stays whole."""
    text = src.read_text()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text if len(text) < keep else f"{text[:keep]}\n\n...\n\n{text[-keep:]}")


def _copy(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def run_report(ws: Workspace) -> StepOutcome:
    spec = ws.spec
    suite = load_suite(spec.suite)
    results, audit_results = stored_outcomes(ws.results_dir)
    # Re-read every performance summary: the report is built from LoadGen's own logs.
    for i, r in enumerate(results):
        summary_path = ws.root / r.logDir / SUMMARY
        if r.testMode == "PerformanceOnly" and summary_path.is_file():
            s = parse_summary(summary_path)
            results[i] = r.model_copy(update={"samplesPerSecond": s.throughput(), "latencyNs": s.latency_ns()})
    system = default_system_name(spec)
    framework = backend_class(spec.backend).version() if spec.backend != "null" else "none (null backend)"
    sysdesc = describe(spec, f"{spec.backend} {framework}", ws.root, suite.submission)
    with staging_dir(ws.workdir.submission(ws.run)) as stage:
        root = stage / suite.name / spec.submission.division / spec.submission.submitter
        _write_tree(ws, suite, root, system, sysdesc, audit_results)
        atomic_write_text(stage / "README.md", _readme(ws, system, results, audit_results))
    synthetic = " [synthetic]" if spec.synthetic else ""
    valid = sum(1 for r in results if r.passed)
    tree = ws.rel(ws.workdir.submission(ws.run) / suite.name)
    judged = verdict(results, audit_results, spec.synthetic)
    message = (
        f"report: {judged.result or 'no result'}: {valid}/{len(results)} results pass, "
        f"{sum(a.passed for a in audit_results)}/{len(audit_results)} audits pass; "
        f"{suite.name} submission tree in {tree}{synthetic}"
    )
    atomic_write_json(
        ws.results_dir / "report.json",
        {
            "suite": suite.name,
            "result": judged.result,
            "reasons": list(judged.reasons),
            "results": [r.model_dump() for r in results],
            "audits": [a.model_dump() for a in audit_results],
            "tree": tree,
        },
    )
    return StepOutcome(step="report", ok=True, message=message)


def _write_tree(
    ws: Workspace, suite: Suite, root: Path, system: str, sysdesc: dict[str, object], audits: list[AuditResult]
) -> None:
    spec, impl, layout = ws.spec, ws.spec.backend, suite.submission.layout
    keep = suite.submission.truncateKeepBytes
    bdir = suite.submission_benchmark(spec.benchmark, spec.configVer)
    atomic_write_json(root / "systems" / f"{system}.json", sysdesc)
    code = root / ("code" if layout == "v1.0" else "src") / bdir / impl / "README.md"
    atomic_write_text(code, _code_readme(ws))
    for doc in suite.submission.documents:
        atomic_write_text(root / "documentation" / doc, _calibration(ws))
    for scenario in spec.scenarios:
        res = root / "results" / system / bdir / scenario
        meas = root / "measurements" / system / bdir / scenario if layout == "v1.0" else res
        comp = root / "compliance" / system / bdir / scenario if layout == "v1.0" else res
        perf_dir, acc_dir = ws.harness_dir(scenario, "PerformanceOnly"), ws.harness_dir(scenario, "AccuracyOnly")
        for f in (SUMMARY, DETAIL):
            _copy(perf_dir / f, res / "performance" / "run_1" / f)
            _copy(acc_dir / f, res / "accuracy" / f)
        if (acc_dir / ACC_LOG).is_file() and (acc_dir / "accuracy.txt").is_file():
            atomic_write_text(res / "accuracy" / "accuracy.txt", accuracy_txt(acc_dir))
            truncate_log(acc_dir / ACC_LOG, res / "accuracy" / ACC_LOG, keep)
        conf_src = perf_dir if (perf_dir / "user.conf").is_file() else acc_dir
        _copy(conf_src / "user.conf", meas / "user.conf")
        if layout == "v1.0":
            _copy(conf_src / "mlperf.conf", meas / "mlperf.conf")
        name = f"{system}_{impl}_{scenario}.json" if layout == "v1.0" else "measurements.json"
        atomic_write_json(meas / name, _measurements(ws))
        atomic_write_text(meas / "README.md", _scenario_readme(ws, scenario))
        for a in audits:
            if a.scenario == scenario:
                _write_audit(ws.audit_dir(a.test, scenario), comp / a.test, keep)


def _write_audit(src: Path, dst: Path, keep: int) -> None:
    """A compliance test's directory as the official run_verification.py leaves it; TEST01's
    logged outputs truncated with their hash recorded, as the truncation tool requires."""
    for f in ("verify_accuracy.txt", "verify_performance.txt"):
        _copy(src / f, dst / f)
    for f in (SUMMARY, DETAIL):
        _copy(src / "performance" / "run_1" / f, dst / "performance" / "run_1" / f)
    acc = src / "accuracy"
    if (acc / ACC_LOG).is_file():
        for f in ("baseline_accuracy.txt", "compliance_accuracy.txt"):
            _copy(acc / f, dst / "accuracy" / f)
        atomic_write_text(dst / "accuracy" / "accuracy.txt", f"hash={sha256(acc / ACC_LOG)}\n")
        truncate_log(acc / ACC_LOG, dst / "accuracy" / ACC_LOG, keep)


_DTYPE_WORDS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # numpy names in MLPerf words


def _measurements(ws: Workspace) -> dict[str, object]:
    """The implementation facts every round's checker requires (SYSTEM_IMP_REQUIRED_FILES)."""
    spec = ws.spec
    model = ws.bench.model_file(ws.model_dir).name if ws.bench.capabilities.get("model") else ""
    precision = artifacts.precision_of(spec)
    return {
        "input_data_types": ", ".join(
            dict.fromkeys(_DTYPE_WORDS.get(t.dtype, t.dtype) for t in ws.bench.inputs(artifacts.input_dtype_of(spec)))
        ),
        "retraining": "No",
        "starting_weights_filename": model,
        "weight_data_types": precision,
        "weight_transformations": "none" if precision == "fp32" else f"quantized/converted to {precision}",
    }


def _code_readme(ws: Workspace) -> str:
    spec = ws.spec
    return (
        f"# {spec.benchmark} with the {spec.backend} backend\n\n"
        "Harness: mlperf-operator (the `mlperf` CLI, package mlperf_harness), one `mlperf <verb>` per "
        "step: download-data, download-model, preprocess, build-engine, run-harness, audit, report.\n"
    )


def _calibration(ws: Workspace) -> str:
    spec = ws.spec
    precision = artifacts.precision_of(spec)
    lines = ["# Calibration and quantization", ""]
    if spec.synthetic:
        lines += [f"**{SYNTHETIC_NOTE}.**", ""]
    if precision == "fp32":
        lines.append(f"{spec.benchmark} ran in FP32 with the model's own weights: no quantization, no calibration.")
    else:
        lines.append(
            f"{spec.benchmark} ran in {precision}; weights converted from the FP32 model by the {spec.backend} "
            "backend's engine build, activation ranges (where the precision needs them) from the round's "
            "calibration list through the reference preprocessing."
        )
    return "\n".join(lines) + "\n"


def _scenario_readme(ws: Workspace, scenario: str) -> str:
    spec = ws.spec
    acc_log = ws.harness_dir(scenario, "AccuracyOnly") / ACC_LOG
    lines = [f"# {spec.benchmark} {scenario} ({spec.backend})", ""]
    if spec.synthetic:
        lines += [f"**{SYNTHETIC_NOTE}.**", ""]
    lines += [
        "Reproduce with the mlperf-operator harness (the run's spec in `spec.yaml`):",
        "",
        "```",
        f"mlperf run-harness --spec spec.yaml --scenario {scenario} --test-mode PerformanceOnly",
        f"mlperf run-harness --spec spec.yaml --scenario {scenario} --test-mode AccuracyOnly",
        "```",
        "",
        "## Accuracy",
        "",
        f"The responses are {ws.bench.response_description()}. The official script scores the full "
        "accuracy log (the tree holds it truncated; `accuracy.txt` records its sha256) with:",
        "",
        "```",
        ws.bench.accuracy_command(acc_log, ws.preprocessed_dir),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _readme(ws: Workspace, system: str, results: list[ScenarioResult], audits: list[AuditResult]) -> str:
    spec = ws.spec
    lines = [f"# Submission part of run {ws.run}: {spec.benchmark} on {system}", ""]
    if spec.synthetic:
        lines += [f"**{SYNTHETIC_NOTE}.** Nothing here may be submitted.", ""]
    lines += [f"Suite {spec.suite}, in that round's layout.", ""]
    lines += ["| scenario | mode | result |", "|---|---|---|"]
    for r in results:
        acc = f"{r.accuracy or 0:.3f} ({r.accuracyMetric})"
        what = r.resultValidity if r.testMode == "PerformanceOnly" else acc
        lines.append(f"| {r.scenario} | {r.testMode} | {what} |")
    for a in audits:
        lines.append(f"| {a.scenario} | {a.test} | {a.verdict}: {a.details} |")
    return "\n".join(lines) + "\n"
