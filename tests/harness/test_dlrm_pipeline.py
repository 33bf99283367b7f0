"""dlrm through the real steps: synthetic data and the small synthetic model, real LoadGen and
onnxruntime, both v1.0 datacenter scenarios in both modes, the round's audits (TEST01, TEST05),
the null backend, and the failures a user meets (wrong files, corrupt answers)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness_support import make_spec
from mlperf_harness import steps
from mlperf_harness.backends.base import Tensors
from mlperf_harness.backends.faulty import Paced, _Wrapper
from mlperf_harness.benchmarks import get_benchmark
from mlperf_harness.benchmarks.dlrm import criteo
from mlperf_harness.config import build_config
from mlperf_harness.errors import HarnessError
from mlperf_harness.samples import SampleStore
from mlperf_harness.spec import Source
from mlperf_harness.suites import load_suite
from mlperf_harness.workspace import Workspace

SAMPLES = 12  # about 3,400 rows: under a second of the small model on two cores
BATCH_ROWS = 1024  # about four samples a batch
DLRM: dict[str, Any] = {
    "benchmark": "dlrm",
    "category": "datacenter",
    "dataset": {"synthetic": {"samples": SAMPLES}},
    "model": {"synthetic": {}},
    "batchSize": BATCH_ROWS,
}
# Short runs; Offline paced to at most 8 samples/s (0.5 s a batch), so its 0.5 s minimum holds on any machine.
RUNS: dict[str, dict[str, Any]] = {
    "Offline": {"loadgen": {"minDurationMs": 500, "minQueryCount": 8, "expectedQps": 20}},
    "Server": {"loadgen": {"minDurationMs": 500, "minQueryCount": 4, "targetQps": 4}},
}
_names = itertools.count()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dlrm-pipeline")
    ws = Workspace(make_spec(**DLRM), root, "prepare", quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess):
        assert step(ws).ok
    return root


def workspace(root: Path, **over: Any) -> Workspace:
    return Workspace(make_spec(**{**DLRM, **over}), root, f"t{next(_names)}", quiet=True)


def accuracy_log(ws: Workspace, scenario: str = "Offline") -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((ws.harness_dir(scenario, "AccuracyOnly") / steps.ACC_LOG).read_text())
    return entries


def test_preprocessed_store_holds_ragged_rows_with_labels(root: Path) -> None:
    ws = workspace(root)
    store = SampleStore(ws.preprocessed_dir, ws.bench.inputs("fp32"))
    assert store.count == SAMPLES and store.ragged and store.facts["synthetic"] is True
    rows = criteo.quantile_sizes(SAMPLES)
    assert store.leading("dense_x").tolist() == rows.tolist()
    data = criteo.open_rows(Path(json.loads((ws.dataset_dir / "dataset.json").read_text())["root"]) / criteo.TEST_FILE)
    first = store.sample(0)
    assert np.array_equal(first["label"], data[: rows[0], 0].astype(np.float32))
    assert np.allclose(first["dense_x"], np.log(data[: rows[0], 1:14].astype(np.float32) + 1))
    assert first["indices"].dtype == np.int32 and first["indices"].shape == (rows[0], 26)
    trace = criteo.read_trace(ws.preprocessed_dir / criteo.TRACE_FILE)
    assert np.diff(trace).tolist() == rows.tolist()


@pytest.mark.parametrize("scenario", list(RUNS))
def test_performance_runs(root: Path, scenario: str) -> None:
    ws = workspace(root, scenarios=[scenario], testModes=["PerformanceOnly"], **RUNS[scenario])
    if scenario == "Offline":
        ws.perf_backend_wrapper = lambda b: Paced(b, 0.5)
    [result] = steps.run_harness(ws, scenario, "PerformanceOnly").results
    assert result.samplesPerSecond and result.latencyNs is not None and result.latencyNs.p50
    assert result.backend.startswith("onnxruntime") and result.synthetic and not result.submittable
    summary = (ws.root / result.logDir / "mlperf_log_summary.txt").read_text()
    if scenario == "Offline":
        assert result.valid, summary
    else:  # a CPU misses the round's 30 ms bound; the run still completes and says why
        assert result.resultValidity in ("VALID", "INVALID")
    # LoadGen loaded the whole (small) set: the round's 204,800 capped at the dataset.
    detail = (ws.root / result.logDir / "mlperf_log_detail.txt").read_text()
    assert f'"effective_performance_sample_count", "value": {SAMPLES},' in detail


@pytest.mark.parametrize("scenario", list(RUNS))
def test_fp32_accuracy_is_100_percent(root: Path, scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace(root, scenarios=[scenario], testModes=["AccuracyOnly"], **RUNS[scenario])
    [result] = steps.run_harness(ws, scenario, "AccuracyOnly").results
    rows = int(criteo.quantile_sizes(SAMPLES).sum())
    line = f"AUC=100.000%, accuracy=100.000%, good={rows}, total={rows}, queries={SAMPLES}"
    assert line in capsys.readouterr().out.splitlines()
    assert result.accuracyMetric == "AUC" and result.accuracy == 100.0 and result.accuracyPassed
    assert result.accuracyTarget == pytest.approx(80.25 * 0.99)
    text = (ws.root / result.logDir / "accuracy.txt").read_text().splitlines()
    assert text[0].startswith("# SYNTHETIC") and text[1] == line
    # Each response is its sample's rows as [prediction, label] float32 pairs, labels as stored.
    store = SampleStore(ws.preprocessed_dir)
    for entry in accuracy_log(ws, scenario):
        pairs = np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, 2)
        assert np.array_equal(pairs[:, 1], store.sample(entry["qsl_idx"])["label"])


def test_high_accuracy_target_and_submission_names(root: Path) -> None:
    rule = load_suite("v1.0").rule("dlrm")
    assert rule.accuracy.threshold("high_accuracy") == pytest.approx(80.25 * 0.999)
    assert [load_suite("v1.0").submission_benchmark("dlrm", cv) for cv in ("default", "high_accuracy")] == [
        "dlrm-99",
        "dlrm-99.9",
    ]
    cfg = build_config(make_spec(**DLRM, configVer="high_accuracy"), "Offline")
    assert cfg.loadgen.performanceSampleCount == 204800 and cfg.batchSize == BATCH_ROWS


AUDITS: dict[str, Any] = {
    "scenarios": ["Offline"],
    "testModes": ["PerformanceOnly", "AccuracyOnly"],
    "audits": ["TEST01", "TEST05"],
    "loadgen": {"minDurationMs": 600, "minQueryCount": 8, "expectedQps": 4},
}
PACE_S = 0.5


def _prepare(ws: Workspace) -> None:
    ws.perf_backend_wrapper = lambda b: Paced(b, PACE_S)
    assert steps.run_harness(ws, "Offline", "PerformanceOnly").results[0].valid
    assert steps.run_harness(ws, "Offline", "AccuracyOnly").results[0].accuracy == 100.0


def test_round_audits_pass(root: Path) -> None:
    ws = workspace(root, **AUDITS)
    _prepare(ws)
    for test in ("TEST01", "TEST05"):
        [result] = steps.audit(ws, test, "Offline").audits
        assert result.passed, f"{test}: {result.details}"
    assert "TEST PASS" in (ws.audit_dir("TEST01", "Offline") / "verify_accuracy.txt").read_text()


class Inverted(_Wrapper):
    """Every prediction p answered as 1 - p: the ranking reversed, the AUC 0."""

    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]:
        return {name: 1 - out for name, out in self.inner.predict(feeds).items()}


def test_test01_fails_when_performance_answers_are_wrong(root: Path) -> None:
    ws = workspace(root, **{**AUDITS, "audits": ["TEST01"]})
    _prepare(ws)
    ws.perf_backend_wrapper = lambda b: Paced(Inverted(b), PACE_S)
    [result] = steps.audit(ws, "TEST01", "Offline").audits
    assert not result.passed
    compliance = (ws.audit_dir("TEST01", "Offline") / "accuracy" / "compliance_accuracy.txt").read_text()
    assert compliance.startswith("AUC=0.000%")


def test_null_backend_offline_is_valid(root: Path) -> None:
    ws = workspace(
        root,
        scenarios=["Offline"],
        testModes=["PerformanceOnly"],
        backend="null",
        loadgen={"minDurationMs": 300, "minQueryCount": 1, "expectedQps": 2000},
    )
    ws.perf_backend_wrapper = lambda b: Paced(b, 0.002)
    [result] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    assert result.valid, (ws.root / result.logDir / "mlperf_log_summary.txt").read_text()


def test_user_files_that_are_wrong_are_one_line_errors(root: Path, tmp_path: Path) -> None:
    bench = get_benchmark("dlrm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HarnessError, match=r"no terabyte_processed_test.bin or day_23_reordered.npz"):
        bench.prepare_dataset(Source(pvc={"claimName": "x", "path": str(empty)}), tmp_path / "d1")
    (empty / criteo.TEST_FILE).write_bytes(b"\0" * 170)  # not whole 160-byte rows
    with pytest.raises(HarnessError, match=r"not a whole number of 160-byte rows"):
        bench.prepare_dataset(Source(pvc={"claimName": "x", "path": str(empty)}), tmp_path / "d2")
    not_dlrm = tmp_path / "m" / "other.onnx"
    not_dlrm.parent.mkdir()
    not_dlrm.write_bytes(b"not a model")
    with pytest.raises(HarnessError, match=r"not a readable ONNX model"):
        bench.prepare_model(Source(pvc={"claimName": "x", "path": str(not_dlrm)}), tmp_path / "m1")
    # A model on a PVC is linked in place (with whatever lies beside it: the external weights).
    model = workspace(root).model_dir / "tb00_40M.onnx"
    got = bench.prepare_model(Source(pvc={"claimName": "x", "path": str(model)}), tmp_path / "m2")
    assert got.is_symlink() and got.read_bytes() == model.read_bytes()
