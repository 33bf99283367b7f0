"""ssd-resnet34 through the harness's real steps: download-model/data, preprocess, build-engine,
run-harness, audit and report, with real LoadGen and onnxruntime on the small synthetic model
(400x400) and a synthetic COCO set of a few images. Every v1.0 scenario in both modes, the v1.0
audits judged, the null backend, the report's tree."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness_support import merge
from mlperf_harness import steps
from mlperf_harness.backends.faulty import CorruptOutputs, Paced
from mlperf_harness.benchmarks import get_benchmark
from mlperf_harness.benchmarks.ssd_resnet34 import SSDResNet34
from mlperf_harness.report import run_report
from mlperf_harness.samples import SampleStore
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_harness.suites import load_suite
from mlperf_harness.workspace import Workspace

N = 8  # images: the accuracy runs infer each once (about 0.1 s each on two busy cores)
SPEC: dict[str, Any] = {
    "benchmark": "ssd-resnet34",
    "suite": "v1.0",
    "category": "edge",
    "scenarios": ["Offline"],
    "testModes": ["PerformanceOnly", "AccuracyOnly"],
    "storage": {"create": {}},
    "system": {"gpuCount": 0},
    "dataset": {"synthetic": {"samples": N, "seed": 3}},
    "model": {"synthetic": {"seed": 3}},
    "batchSize": 1,
    "audits": [],
    "loadgen": {"performanceSampleCount": N},
}
# Short LoadGen runs, far below a submission's 600 s; the round's categories per scenario.
RUNS: dict[str, dict[str, Any]] = {
    # paced below the expected rate (test_every_scenario_both_modes): its 8 samples outlast 0.3 s on any machine
    "Offline": {"loadgen": {"minDurationMs": 300, "minQueryCount": N, "expectedQps": 20}},
    "SingleStream": {"loadgen": {"minDurationMs": 200, "minQueryCount": 4, "targetLatencyMs": 100}},
    "MultiStream": {
        "loadgen": {"minDurationMs": 200, "minQueryCount": 2, "targetLatencyMs": 200, "samplesPerQuery": 2}
    },
    "Server": {"category": "datacenter", "loadgen": {"minDurationMs": 500, "minQueryCount": 4, "targetQps": 4}},
}
PACE_S = 0.3  # a batch (one image) paced well above its ~0.1 s: the audits' timing sees the pace
_names = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ssd-work")
    ws = Workspace(MLPerfRunSpec.model_validate(SPEC), root, "prepare", quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess, steps.build_engine):
        assert step(ws).ok
    return root


def make(workdir: Path, scenario: str = "Offline", **over: Any) -> Workspace:
    spec = merge(merge(SPEC, {"scenarios": [scenario], **RUNS[scenario]}), over)
    return Workspace(MLPerfRunSpec.model_validate(spec), workdir, f"ssd{next(_names)}", quiet=True)


def test_registered_with_every_capability() -> None:
    bench = get_benchmark("ssd-resnet34")
    assert isinstance(bench, SSDResNet34) and all(bench.capabilities.values())
    rule = load_suite("v1.0").rule("ssd-resnet34")
    # accuracy-coco.py prints mAP in percent; the v1.0 checker compares it with 20 x 0.99.
    assert (rule.accuracy.metric, rule.accuracy.unit) == ("mAP", "%")
    assert rule.accuracy.threshold("default") == pytest.approx(19.8)


def test_preprocessed_store(workdir: Path) -> None:
    ws = make(workdir)
    store = SampleStore(ws.preprocessed_dir, ws.bench.inputs("fp32"))
    assert store.count == N and store.facts["synthetic"]
    assert store.sample(0)["image"].shape == (3, 400, 400)  # the small model's input size
    assert (ws.preprocessed_dir / "annotations" / "instances_val2017.json").is_file()  # what scoring reads


@pytest.mark.parametrize("scenario", list(RUNS))
def test_every_scenario_both_modes(workdir: Path, scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    ws = make(workdir, scenario)
    if scenario == "Offline":  # at most 16 images/s: a quiet machine (134/s) would end before 0.3 s
        ws.perf_backend_wrapper = lambda b: Paced(b, 0.06)
    [perf] = steps.run_harness(ws, scenario, "PerformanceOnly").results
    summary = (ws.root / perf.logDir / "mlperf_log_summary.txt").read_text()
    assert perf.samplesPerSecond and perf.latencyNs is not None and perf.synthetic, summary
    if scenario == "Offline":
        assert perf.valid, summary
    outcome = steps.run_harness(ws, scenario, "AccuracyOnly")
    assert "SUT errors" not in outcome.message
    [acc] = outcome.results
    assert "mAP=100.000%" in capsys.readouterr().out.splitlines()
    assert acc.accuracy == pytest.approx(100.0) and acc.accuracyPassed and acc.accuracyMetric == "mAP"
    log = json.loads((ws.root / acc.logDir / "mlperf_log_accuracy.json").read_text())
    assert sorted({int(e["qsl_idx"]) for e in log}) == list(range(N))
    for e in log:  # the reference's rows: the QSL index first, score >= 0.5
        rows = np.frombuffer(bytes.fromhex(e["data"]), np.float32).reshape(-1, 7)
        assert np.all(rows[:, 0] == e["qsl_idx"]) and np.all(rows[:, 5] >= 0.5)


def test_v10_audits_and_report(workdir: Path) -> None:
    tests = ["TEST01", "TEST04-A", "TEST04-B", "TEST05"]
    ws = make(workdir, audits=tests, submission={"submitter": "acme", "systemName": "box1"})
    ws.perf_backend_wrapper = lambda b: Paced(b, PACE_S)
    assert steps.run_harness(ws, "Offline", "PerformanceOnly").results[0].valid
    assert steps.run_harness(ws, "Offline", "AccuracyOnly").results[0].accuracy == pytest.approx(100.0)
    for test in tests:
        [result] = steps.audit(ws, test, "Offline").audits
        assert result.passed, f"{test}: {result.details}"
    assert "TEST PASS" in (ws.audit_dir("TEST01", "Offline") / "verify_accuracy.txt").read_text()

    assert run_report(ws).ok
    full_log = ws.harness_dir("Offline", "AccuracyOnly") / "mlperf_log_accuracy.json"
    root = ws.workdir.submission(ws.run) / "v1.0" / "closed" / "acme"
    res = root / "results" / "box1" / "ssd-resnet34" / "Offline"  # the v1.0 checker maps it to ssd-large
    acc = (res / "accuracy" / "accuracy.txt").read_text().splitlines()
    assert acc[1:] == ["mAP=100.000%", f"hash={hashlib.sha256(full_log.read_bytes()).hexdigest()}"]
    readme = (root / "measurements" / "box1" / "ssd-resnet34" / "Offline" / "README.md").read_text()
    command = f"accuracy-coco.py --mlperf-accuracy-file {full_log} --coco-dir {ws.preprocessed_dir} --use-inv-map"
    assert command in readme
    assert (root / "compliance" / "box1" / "ssd-resnet34" / "Offline" / "TEST05" / "verify_performance.txt").is_file()


def test_test01_catches_corrupt_performance_outputs(workdir: Path) -> None:
    ws = make(workdir, audits=["TEST01"])
    ws.perf_backend_wrapper = lambda b: Paced(b, PACE_S)
    assert steps.run_harness(ws, "Offline", "PerformanceOnly").results[0].valid
    assert steps.run_harness(ws, "Offline", "AccuracyOnly").results[0].accuracy == pytest.approx(100.0)
    ws.perf_backend_wrapper = lambda b: Paced(CorruptOutputs(b), PACE_S)  # boxes, labels, scores + 1
    [result] = steps.audit(ws, "TEST01", "Offline").audits
    assert not result.passed
    text = (ws.audit_dir("TEST01", "Offline") / "accuracy" / "compliance_accuracy.txt").read_text()
    assert text.startswith("mAP=") and float(text[4:].split("%")[0]) < 19.8


def test_null_backend_offline_is_valid(workdir: Path) -> None:
    ws = make(workdir, backend="null", testModes=["PerformanceOnly"])
    ws.perf_backend_wrapper = lambda b: Paced(b, 0.05)
    [result] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    assert result.valid, (ws.root / result.logDir / "mlperf_log_summary.txt").read_text()


def test_batch_of_two_offline(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The synthetic graph takes a batch (the official one's is 1): batchSize 2 warms up and runs one
    model call per batch, VALID, and the answers are the batch-1 labels' (mAP 100 %)."""
    ws = make(workdir, batchSize=2)
    ws.perf_backend_wrapper = lambda b: Paced(b, PACE_S)
    [perf] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    assert perf.valid and "batch" not in perf.backend, (ws.root / perf.logDir / "mlperf_log_summary.txt").read_text()
    [acc] = steps.run_harness(ws, "Offline", "AccuracyOnly").results
    assert "mAP=100.000%" in capsys.readouterr().out.splitlines()
    assert acc.accuracy == pytest.approx(100.0)
