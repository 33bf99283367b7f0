"""report: LoadGen logs -> results, and the run's part of both submission layouts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlperf_harness import steps
from mlperf_harness.backends.faulty import Paced
from mlperf_harness.report import KEEP_BYTES, run_report
from mlperf_harness.sysinfo import REQUIRED_FIELDS


def test_report_writes_both_layouts(workspace: Any) -> None:
    ws = workspace(
        audits=["TEST01"],
        batchSize=2,
        testModes=["PerformanceOnly", "AccuracyOnly"],
        loadgen={"minDurationMs": 300, "minQueryCount": 4, "expectedQps": 6, "performanceSampleCount": 8},
        submission={"submitter": "acme", "systemName": "box1", "systemOverrides": {"cooling": "air"}},
    )
    ws.perf_backend_wrapper = lambda b: Paced(b, 0.3)
    steps.run_harness(ws, "Offline", "PerformanceOnly")
    steps.run_harness(ws, "Offline", "AccuracyOnly")
    steps.audit(ws, "TEST01", "Offline")
    outcome = run_report(ws)
    assert outcome.ok and "[synthetic]" in outcome.message

    sub = ws.workdir.submission(ws.run)
    v10 = sub / "v1.0" / "closed" / "acme"
    cur = sub / "v6.0" / "closed" / "acme"
    full_log = ws.harness_dir("Offline", "AccuracyOnly") / "mlperf_log_accuracy.json"
    digest = hashlib.sha256(full_log.read_bytes()).hexdigest()
    tail = ("box1", "resnet50", "Offline")
    for root, meas, comp in (
        (v10, v10.joinpath("measurements", *tail), v10.joinpath("compliance", *tail)),
        (cur, cur.joinpath("results", *tail), cur.joinpath("results", *tail)),
    ):
        res = root / "results" / "box1" / "resnet50" / "Offline"
        assert (res / "performance" / "run_1" / "mlperf_log_summary.txt").is_file()
        assert (res / "performance" / "run_1" / "mlperf_log_detail.txt").is_file()
        acc = (res / "accuracy" / "accuracy.txt").read_text().splitlines()
        assert acc[0].startswith("# SYNTHETIC")
        assert acc[1] == "accuracy=100.000%, good=32, total=32" and acc[2] == f"hash={digest}"
        assert (res / "accuracy" / "mlperf_log_accuracy.json").stat().st_size <= KEEP_BYTES + 100
        assert (meas / "user.conf").is_file() and "SYNTHETIC" in (meas / "README.md").read_text()
        assert (comp / "TEST01" / "verify_accuracy.txt").is_file()
        assert (comp / "TEST01" / "verify_performance.txt").is_file()
        assert (comp / "TEST01" / "performance" / "run_1" / "mlperf_log_summary.txt").is_file()
        assert (comp / "TEST01" / "accuracy" / "mlperf_log_accuracy.json").is_file()
        system = json.loads((root / "systems" / "box1.json").read_text())
        assert set(REQUIRED_FIELDS) <= set(system) and system["cooling"] == "air"
        assert system["host_processor_core_count"] >= 1 and system["host_memory_capacity"].endswith("GB")
    assert (v10 / "measurements" / "box1" / "resnet50" / "Offline" / "mlperf.conf").is_file()
    mconf = (v10 / "measurements" / "box1" / "resnet50" / "Offline" / "mlperf.conf").read_text()
    assert "*.*.qsl_rng_seed = 7322528924094909334" in mconf
    assert (v10 / "measurements" / "box1" / "resnet50" / "Offline" / "box1_onnxruntime_Offline.json").is_file()
    measurements = json.loads((cur / "results" / "box1" / "resnet50" / "Offline" / "measurements.json").read_text())
    for key in (
        "input_data_types",
        "retraining",
        "starting_weights_filename",
        "weight_data_types",
        "weight_transformations",
    ):
        assert key in measurements
    assert (cur / "src" / "resnet50" / "onnxruntime" / "README.md").is_file()
    assert (v10 / "code" / "resnet50" / "onnxruntime" / "README.md").is_file()
    assert "SYNTHETIC" in (sub / "README.md").read_text()
    stored = json.loads((ws.results_dir / "report.json").read_text())
    assert {r["testMode"] for r in stored["results"]} == {"PerformanceOnly", "AccuracyOnly"}


def test_every_verb_is_idempotent(workspace: Any, tmp_path: Path) -> None:
    ws = workspace(loadgen={"minDurationMs": 200, "minQueryCount": 8, "expectedQps": 20})
    for verb in (steps.download_model, steps.download_data, steps.preprocess):
        again = verb(ws)
        assert again.cacheHit and "already complete" in again.message
    first = steps.run_harness(ws, "Offline", "PerformanceOnly")
    assert not first.cacheHit
    summary = ws.harness_dir("Offline", "PerformanceOnly") / "mlperf_log_summary.txt"
    before = summary.stat().st_mtime_ns
    again = steps.run_harness(ws, "Offline", "PerformanceOnly")
    assert again.cacheHit and again.results == first.results
    assert summary.stat().st_mtime_ns == before
    built = steps.build_engine(ws, "Offline")
    assert not built.cacheHit and steps.build_engine(ws, "Offline").cacheHit
