"""Real LoadGen + real onnxruntime on synthetic data: every scenario, both modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness_support import SAMPLES
from mlperf_harness import steps
from mlperf_harness.backends.faulty import Paced
from mlperf_harness.results import read_termination_message

# Short LoadGen runs: enough to exercise every path, far below a submission's 600 s.
ORT_RUNS: dict[str, dict[str, Any]] = {
    "Offline": {"category": "edge", "loadgen": {"minDurationMs": 500, "minQueryCount": 16, "expectedQps": 20}},
    "SingleStream": {"category": "edge", "loadgen": {"minDurationMs": 200, "minQueryCount": 8, "targetLatencyMs": 100}},
    "MultiStream": {
        "category": "edge",
        "batchSize": 2,
        "loadgen": {"minDurationMs": 200, "minQueryCount": 4, "targetLatencyMs": 200, "samplesPerQuery": 2},
    },
    "Server": {"category": "datacenter", "loadgen": {"minDurationMs": 1000, "minQueryCount": 4, "targetQps": 4}},
}


@pytest.mark.parametrize("scenario", list(ORT_RUNS))
def test_onnxruntime_performance_run_completes(workspace: Any, scenario: str, _termination_log: Path) -> None:
    ws = workspace(scenarios=[scenario], testModes=["PerformanceOnly"], **ORT_RUNS[scenario])
    if scenario == "Offline":
        # At most 16 samples/s whatever the machine: 16 samples outlast the 0.5 s minimum (VALID).
        ws.perf_backend_wrapper = lambda b: Paced(b, 0.5)
    outcome = steps.run_harness(ws, scenario, "PerformanceOnly")
    [result] = outcome.results
    assert result.scenario == scenario and result.testMode == "PerformanceOnly"
    assert result.resultValidity in ("VALID", "INVALID")
    assert result.samplesPerSecond and result.samplesPerSecond > 0
    assert result.latencyNs is not None and result.latencyNs.p50
    assert result.synthetic and not result.submittable
    assert result.device == "cpu" and result.backend.startswith("onnxruntime")
    log_dir = ws.root / result.logDir
    assert (log_dir / "mlperf_log_summary.txt").is_file() and (log_dir / "user.conf").is_file()
    if scenario == "Offline":
        assert result.valid, (log_dir / "mlperf_log_summary.txt").read_text()
    # The operator's copy says the same.
    assert read_termination_message(_termination_log.read_text()) == outcome


# The null backend paced to a fixed service time: runs long enough for LoadGen's rules
# (early stopping needs 64 SingleStream / 662 MultiStream queries) and VALID however busy the machine.
NULL_RUNS: dict[str, tuple[float, dict[str, Any]]] = {
    "Offline": (
        0.002,
        {"category": "edge", "loadgen": {"minDurationMs": 300, "minQueryCount": 1, "expectedQps": 5000}},
    ),
    "SingleStream": (
        0.001,
        {
            "category": "edge",
            "batchSize": 1,
            "loadgen": {"minDurationMs": 200, "minQueryCount": 100, "targetLatencyMs": 0.5},
        },
    ),
    "MultiStream": (
        0.0005,
        {
            "category": "edge",
            "loadgen": {"minDurationMs": 200, "minQueryCount": 662, "targetLatencyMs": 0.25, "samplesPerQuery": 8},
        },
    ),
    "Server": (
        0.0005,
        {
            "category": "datacenter",
            "batchSize": 8,
            "loadgen": {"minDurationMs": 1000, "minQueryCount": 100, "targetQps": 500},
        },
    ),
}


@pytest.mark.parametrize("scenario", list(NULL_RUNS))
def test_null_backend_runs_are_valid(workspace: Any, scenario: str) -> None:
    seconds, over = NULL_RUNS[scenario]
    ws = workspace(scenarios=[scenario], testModes=["PerformanceOnly"], backend="null", **over)
    ws.perf_backend_wrapper = lambda b: Paced(b, seconds)
    [result] = steps.run_harness(ws, scenario, "PerformanceOnly").results
    summary = (ws.root / result.logDir / "mlperf_log_summary.txt").read_text()
    assert result.valid, summary
    assert not result.submittable


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_accuracy_is_100_percent_at_fp32(workspace: Any, scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace(scenarios=[scenario], testModes=["AccuracyOnly"])
    [result] = steps.run_harness(ws, scenario, "AccuracyOnly").results
    line = f"accuracy=100.000%, good={SAMPLES}, total={SAMPLES}"
    assert line in capsys.readouterr().out.splitlines()
    assert result.accuracy == 100.0 and result.accuracyPassed
    assert result.accuracyMetric == "top-1" and result.accuracyTarget == pytest.approx(76.46 * 0.99)
    text = (ws.root / result.logDir / "accuracy.txt").read_text().splitlines()
    assert text[0].startswith("# SYNTHETIC") and text[1] == line


def test_accuracy_detects_wrong_labels(workspace: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The accuracy path can fail: every prediction off by one scores 0 %."""
    from mlperf_harness.benchmarks.resnet50 import imagenet_accuracy

    ws = workspace(testModes=["AccuracyOnly"])
    [result] = steps.run_harness(ws, "Offline", "AccuracyOnly").results
    log_dir = ws.root / result.logDir
    val_map = log_dir / "shifted_val_map.txt"
    lines = (ws.preprocessed_dir / "val_map.txt").read_text().splitlines()
    val_map.write_text("".join(f"{f} {int(lab) + 1}\n" for f, lab in (ln.split() for ln in lines)))
    report = imagenet_accuracy(log_dir / "mlperf_log_accuracy.json", val_map)
    assert report.line == f"accuracy=0.000%, good=0, total={SAMPLES}"
