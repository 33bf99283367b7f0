"""report: the run's LoadGen logs -> results models, and the run's part of a submission tree in
two layouts, the v1.0 round's and the current round's (MLPerf Inference v6.0).

v1.0:    <division>/<submitter>/{systems/<sys>.json, code/<bench>/<impl>/, measurements/<sys>/<bench>/
         <scenario>/{<sys>_<impl>_<scenario>.json, README.md, user.conf, mlperf.conf},
         results/<sys>/<bench>/<scenario>/{performance/run_1, accuracy}, compliance/<sys>/<bench>/<scenario>/TEST0x}
current: <division>/<submitter>/{systems/<sys>.json, src/<bench>/<impl>/, documentation/,
         results/<sys>/<bench>/<scenario>/{README.md, user.conf, measurements.json, performance/run_1,
         accuracy, TEST01, TEST04}}
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .backends import backend_class
from .fsutil import atomic_write_json, atomic_write_text, staging_dir
from .loadgen.logs import parse_summary
from .results import AuditResult, ScenarioResult, StepOutcome
from .steps import ACC_LOG, DETAIL, SUMMARY, SYNTHETIC_NOTE
from .suites import load_suite
from .sysinfo import default_system_name, describe
from .workspace import Workspace

KEEP_BYTES = 10_000  # what stays of a truncated accuracy log
LAYOUTS = ("v1.0", "v6.0")


def bench_dir(benchmark: str, suite: str, config_ver: str) -> str:
    """Benchmarks with a high-accuracy target carry the level in their directory name."""
    targets = load_suite(suite).rule(benchmark).accuracy.targets
    if "high_accuracy" not in targets:
        return benchmark
    return f"{benchmark}-{'99.9' if config_ver == 'high_accuracy' else '99'}"


def accuracy_txt(log_dir: Path) -> str:
    """accuracy.txt of a submission: the accuracy script's line and the full log's hash."""
    line = next((ln for ln in (log_dir / "accuracy.txt").read_text().splitlines() if not ln.startswith("#")), "")
    digest = hashlib.sha256((log_dir / ACC_LOG).read_bytes()).hexdigest()
    header = (log_dir / "accuracy.txt").read_text().splitlines()[0]
    prefix = f"{header}\n" if header.startswith("#") else ""
    return f"{prefix}{line}\nhash={digest}\n"


def truncate_log(src: Path, dst: Path) -> None:
    """Keep the head and the tail of the accuracy log (about 10 KB), as submissions must."""
    data = src.read_bytes()
    if len(data) <= KEEP_BYTES:
        dst.write_bytes(data)
        return
    half = KEEP_BYTES // 2
    dst.write_bytes(data[:half] + b"\n...truncated by mlperf-operator (hash in accuracy.txt)...\n" + data[-half:])


def _copy(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _stored_results(ws: Workspace) -> tuple[list[ScenarioResult], list[AuditResult]]:
    results: list[ScenarioResult] = []
    audits: list[AuditResult] = []
    for f in sorted(ws.results_dir.glob("*.json")):
        if f.name.startswith("report"):
            continue
        outcome = StepOutcome.model_validate_json(f.read_text())
        results += outcome.results
        audits += outcome.audits
    return results, audits


def run_report(ws: Workspace) -> StepOutcome:
    spec = ws.spec
    results, audit_results = _stored_results(ws)
    # Re-read every performance summary: the report is built from LoadGen's own logs.
    for i, r in enumerate(results):
        summary_path = ws.root / r.logDir / SUMMARY
        if r.testMode == "PerformanceOnly" and summary_path.is_file():
            s = parse_summary(summary_path)
            results[i] = r.model_copy(update={"samplesPerSecond": s.throughput(), "latencyNs": s.latency_ns()})
    system = default_system_name(spec)
    impl = spec.backend
    framework = backend_class(spec.backend).version() if spec.backend != "null" else "none (null backend)"
    sysdesc = describe(spec, f"{spec.backend} {framework}", ws.root)
    written = []
    with staging_dir(ws.workdir.submission(ws.run)) as stage:
        for layout in LAYOUTS:
            root = stage / layout / spec.submission.division / spec.submission.submitter
            _write_layout(ws, layout, root, system, impl, sysdesc, results, audit_results)
            written.append(str(root.relative_to(stage)))
        atomic_write_text(stage / "README.md", _readme(ws, system, results, audit_results))
    synthetic = " [synthetic]" if spec.synthetic else ""
    valid = sum(1 for r in results if r.passed)
    message = (
        f"report: {valid}/{len(results)} results pass, "
        f"{sum(a.passed for a in audit_results)}/{len(audit_results)} audits pass; "
        f"submission trees in {ws.rel(ws.workdir.submission(ws.run))}{synthetic}"
    )
    outcome = StepOutcome(step="report", ok=True, message=message)
    atomic_write_text(
        ws.results_dir / "report.json",
        json.dumps(
            {
                "results": [r.model_dump() for r in results],
                "audits": [a.model_dump() for a in audit_results],
                "layouts": written,
            },
            indent=2,
        ),
    )
    return outcome


def _write_layout(
    ws: Workspace,
    layout: str,
    root: Path,
    system: str,
    impl: str,
    sysdesc: dict[str, object],
    results: list[ScenarioResult],
    audit_results: list[AuditResult],
) -> None:
    spec = ws.spec
    bdir = bench_dir(spec.benchmark, spec.suite, spec.configVer)
    atomic_write_json(root / "systems" / f"{system}.json", sysdesc)
    code = root / ("code" if layout == "v1.0" else "src") / spec.benchmark / impl / "README.md"
    atomic_write_text(
        code,
        f"# {spec.benchmark} with the {impl} backend\n\nHarness: mlperf-operator "
        "(`mlperf` CLI, package mlperf_harness).\n",
    )
    if layout != "v1.0":
        atomic_write_text(root / "documentation" / "README.md", "Run with the mlperf-operator harness.\n")
    for scenario in spec.scenarios:
        res = root / "results" / system / bdir / scenario
        meas = root / "measurements" / system / bdir / scenario if layout == "v1.0" else res
        perf_dir, acc_dir = ws.harness_dir(scenario, "PerformanceOnly"), ws.harness_dir(scenario, "AccuracyOnly")
        for f in (SUMMARY, DETAIL):
            _copy(perf_dir / f, res / "performance" / "run_1" / f)
            _copy(acc_dir / f, res / "accuracy" / f)
        if (acc_dir / ACC_LOG).is_file() and (acc_dir / "accuracy.txt").is_file():
            atomic_write_text(res / "accuracy" / "accuracy.txt", accuracy_txt(acc_dir))
            truncate_log(acc_dir / ACC_LOG, res / "accuracy" / ACC_LOG)
        conf_src = perf_dir if (perf_dir / "user.conf").is_file() else acc_dir
        _copy(conf_src / "user.conf", meas / "user.conf")
        if layout == "v1.0":
            _copy(conf_src / "mlperf.conf", meas / "mlperf.conf")
        measurements = _measurements(ws, scenario)
        name = f"{system}_{impl}_{scenario}.json" if layout == "v1.0" else "measurements.json"
        atomic_write_json(meas / name, measurements)
        atomic_write_text(meas / "README.md", _scenario_readme(ws, scenario, results))
        comp = (root / "compliance" / system / bdir / scenario) if layout == "v1.0" else res
        for a in audit_results:
            if a.scenario != scenario:
                continue
            src = ws.audit_dir(a.test, scenario)
            dst = comp / a.test
            for f in ("verify_accuracy.txt", "verify_performance.txt"):
                _copy(src / f, dst / f)
            for f in (SUMMARY, DETAIL):
                _copy(src / "performance" / "run_1" / f, dst / "performance" / "run_1" / f)
            if (src / "accuracy" / ACC_LOG).is_file():
                truncate_log(src / "accuracy" / ACC_LOG, _mk(dst / "accuracy") / ACC_LOG)


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _measurements(ws: Workspace, scenario: str) -> dict[str, object]:
    spec = ws.spec
    model = ws.bench.model_file(ws.model_dir).name if ws.bench.capabilities.get("model") else ""
    precision = "int8" if spec.precision == "int8" else (spec.precision or "fp32")
    return {
        "input_data_types": "int8" if precision == "int8" else "fp32",
        "retraining": "No",
        "starting_weights_filename": model,
        "weight_data_types": precision,
        "weight_transformations": "none" if precision == "fp32" else f"quantized/converted to {precision}",
        "scenario": scenario,
        "synthetic": spec.synthetic,
    }


def _scenario_readme(ws: Workspace, scenario: str, results: list[ScenarioResult]) -> str:
    spec = ws.spec
    lines = [f"# {spec.benchmark} {scenario} ({spec.backend})", ""]
    if spec.synthetic:
        lines += [f"**{SYNTHETIC_NOTE}.**", ""]
    lines += [
        "Reproduce with the mlperf-operator harness:",
        "",
        "```",
        f"mlperf run-harness --spec spec.yaml --scenario {scenario} --test-mode PerformanceOnly",
        f"mlperf run-harness --spec spec.yaml --scenario {scenario} --test-mode AccuracyOnly",
        "```",
        "",
    ]
    for r in results:
        if r.scenario == scenario:
            figure = f"{r.samplesPerSecond:.2f} samples/s" if r.samplesPerSecond else f"accuracy {r.accuracy}"
            lines.append(f"- {r.testMode}: {r.resultValidity or ''} {figure}".rstrip())
    return "\n".join(lines) + "\n"


def _readme(ws: Workspace, system: str, results: list[ScenarioResult], audits: list[AuditResult]) -> str:
    spec = ws.spec
    lines = [f"# Submission part of run {ws.run}: {spec.benchmark} on {system}", ""]
    if spec.synthetic:
        lines += [f"**{SYNTHETIC_NOTE}.** Nothing here may be submitted.", ""]
    lines += [f"Suite {spec.suite}; layouts: " + ", ".join(LAYOUTS), ""]
    lines += ["| scenario | mode | result |", "|---|---|---|"]
    for r in results:
        acc = f"{r.accuracy or 0:.3f} ({r.accuracyMetric})"
        what = r.resultValidity if r.testMode == "PerformanceOnly" else acc
        lines.append(f"| {r.scenario} | {r.testMode} | {what} |")
    for a in audits:
        lines.append(f"| {a.scenario} | {a.test} | {'PASS' if a.passed else 'FAIL'}: {a.details} |")
    return "\n".join(lines) + "\n"
