"""report: LoadGen logs -> results, and the run's part of its round's submission tree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from mlperf_harness import steps
from mlperf_harness.backends.faulty import Paced
from mlperf_harness.report import run_report, truncate_log
from mlperf_harness.submission import MAX_ACCURACY_LOG_BYTES
from mlperf_harness.suites import load_suite

ROUNDS = {
    # round: (category, the benchmark's directory there, audits of the report)
    "v1.0": ("datacenter", "resnet50", ["TEST01"]),
    "v6.1": ("edge", "resnet", ["TEST01"]),
}


@pytest.mark.parametrize("suite", sorted(ROUNDS))
def test_report_writes_its_rounds_layout_only(workspace: Any, suite: str) -> None:
    category, bdir, audit_tests = ROUNDS[suite]
    ws = workspace(
        suite=suite,
        category=category,
        audits=audit_tests,
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
    assert sorted(d.name for d in sub.iterdir() if d.is_dir()) == [suite]  # one round, one layout
    root = sub / suite / "closed" / "acme"
    full_log = ws.harness_dir("Offline", "AccuracyOnly") / "mlperf_log_accuracy.json"
    digest = hashlib.sha256(full_log.read_bytes()).hexdigest()
    tail = ("box1", bdir, "Offline")
    res = root.joinpath("results", *tail)
    meas = root.joinpath("measurements", *tail) if suite == "v1.0" else res
    comp = root.joinpath("compliance", *tail) if suite == "v1.0" else res
    assert (res / "performance" / "run_1" / "mlperf_log_summary.txt").is_file()
    assert (res / "performance" / "run_1" / "mlperf_log_detail.txt").is_file()
    acc = (res / "accuracy" / "accuracy.txt").read_text().splitlines()
    assert acc[0].startswith("# SYNTHETIC")
    assert acc[1] == "accuracy=100.000%, good=32, total=32" and acc[2] == f"hash={digest}"
    truncated = (res / "accuracy" / "mlperf_log_accuracy.json").read_text()
    text = full_log.read_text()
    assert truncated == (text if len(text) < 4096 else f"{text[:4096]}\n\n...\n\n{text[-4096:]}")
    assert (meas / "user.conf").is_file()
    readme = (meas / "README.md").read_text()
    assert "SYNTHETIC" in readme and f"--mlperf-accuracy-file {full_log}" in readme and "--dtype int32" in readme
    assert (comp / "TEST01" / "verify_accuracy.txt").is_file()
    assert (comp / "TEST01" / "verify_performance.txt").is_file()
    assert (comp / "TEST01" / "performance" / "run_1" / "mlperf_log_summary.txt").is_file()
    test01_log = ws.audit_dir("TEST01", "Offline") / "accuracy" / "mlperf_log_accuracy.json"
    test01_hash = hashlib.sha256(test01_log.read_bytes()).hexdigest()
    assert (comp / "TEST01" / "accuracy" / "accuracy.txt").read_text() == f"hash={test01_hash}\n"
    assert (comp / "TEST01" / "accuracy" / "mlperf_log_accuracy.json").stat().st_size <= MAX_ACCURACY_LOG_BYTES
    system = json.loads((root / "systems" / "box1.json").read_text())
    rules = load_suite(suite).submission
    assert sorted(system) == sorted(rules.systemFields) and system["cooling"] == "air"  # exactly the round's
    assert all(system[f] not in (0, "") for f in rules.meaningfulFields)
    assert system["host_processor_core_count"] >= 1 and system["host_memory_capacity"].endswith("GB")
    implementation = json.loads(
        (meas / ("box1_onnxruntime_Offline.json" if suite == "v1.0" else "measurements.json")).read_text()
    )
    assert set(implementation) == {
        "input_data_types",
        "retraining",
        "starting_weights_filename",
        "weight_data_types",
        "weight_transformations",
    }
    code = "code" if suite == "v1.0" else "src"
    assert (root / code / bdir / "onnxruntime" / "README.md").is_file()
    if suite == "v1.0":
        assert "*.*.qsl_rng_seed = 7322528924094909334" in (meas / "mlperf.conf").read_text()
        assert not (root / "documentation").exists()
    else:
        assert not (meas / "mlperf.conf").exists()  # LoadGen's own conf is the round's: user.conf only
        assert "FP32" in (root / "documentation" / "calibration.md").read_text()
    assert "SYNTHETIC" in (sub / "README.md").read_text()
    stored = json.loads((ws.results_dir / "report.json").read_text())
    assert {r["testMode"] for r in stored["results"]} == {"PerformanceOnly", "AccuracyOnly"}


def test_truncation_keeps_4096_characters_at_each_end(tmp_path: Path) -> None:
    """As the rounds' truncate_accuracy_log.py: head, a "..." line, tail; short logs stay whole."""
    log = tmp_path / "full.json"
    log.write_text(
        "[\n" + ",\n".join(f'{{ "seq_id" : {i}, "qsl_idx" : {i}, "data" : "00000000" }}' for i in range(500))
    )
    truncate_log(log, tmp_path / "cut.json", 4096)
    cut, text = (tmp_path / "cut.json").read_text(), log.read_text()
    assert cut == text[:4096] + "\n\n...\n\n" + text[-4096:] and len(cut) <= MAX_ACCURACY_LOG_BYTES
    log.write_text("[]\n")
    truncate_log(log, tmp_path / "short.json", 4096)
    assert (tmp_path / "short.json").read_text() == "[]\n"


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
