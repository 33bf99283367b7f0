"""rnnt through the real steps (download-model, download-data, preprocess, build-engine,
run-harness, audit) with real LoadGen and onnxruntime on the small synthetic RNN-T: every v1.0
scenario in both modes (FP32 scores 100 - WER = 100 %), TEST01 and TEST05 judged, the null
backend, and the real-format sources (a PVC with the FLAC download, the graphs as a tar)."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness_support import make_spec
from mlperf_harness import steps
from mlperf_harness.backends.base import Tensors
from mlperf_harness.backends.faulty import Paced
from mlperf_harness.benchmarks import get_benchmark
from mlperf_harness.benchmarks.rnnt import FILES, MANIFEST
from mlperf_harness.errors import HarnessError
from mlperf_harness.spec import Source
from mlperf_harness.workspace import Workspace

SAMPLES = 6
RNNT: dict[str, Any] = {
    "benchmark": "rnnt",
    "dataset": {"synthetic": {"samples": SAMPLES, "seed": 2}},
    "model": {"synthetic": {"seed": 2}},
    "audits": [],
    "batchSize": 4,
}
# Short LoadGen runs, far below a submission's 600 s. Offline is VALID however busy the machine
# (the encoder call of each batch paced, so 6 samples outlast the minimum duration).
RUNS: dict[str, dict[str, Any]] = {
    "Offline": {"category": "datacenter", "loadgen": {"minDurationMs": 500, "minQueryCount": 6, "expectedQps": 8}},
    "Server": {"category": "datacenter", "loadgen": {"minDurationMs": 500, "minQueryCount": 4, "targetQps": 4}},
    "SingleStream": {"category": "edge", "loadgen": {"minDurationMs": 300, "minQueryCount": 4, "targetLatencyMs": 200}},
}


class PacedEncoder(Paced):
    """Paces each batch once (its encoder call), not every decoder step."""

    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]:
        return super().predict(feeds) if "feature" in feeds else self.inner.predict(feeds)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rnnt-work")
    ws = Workspace(make_spec(**RNNT), root, "prepare", quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess):
        assert step(ws).ok
    return root


def workspace(root: Path, run: str, **over: Any) -> Workspace:
    return Workspace(make_spec(**{**RNNT, **over}), root, run, quiet=True)


@pytest.mark.parametrize("scenario", list(RUNS))
def test_every_scenario_runs_and_scores_100(root: Path, scenario: str) -> None:
    modes = ["PerformanceOnly", "AccuracyOnly"]
    ws = workspace(root, f"s-{scenario}", scenarios=[scenario], testModes=modes, **RUNS[scenario])
    ws.perf_backend_wrapper = lambda b: PacedEncoder(b, 0.4)
    assert steps.build_engine(ws, scenario).ok
    # one optimised graph per part, each part run from its own
    assert sorted(p.name for p in ws.model_paths(scenario).values()) == sorted(
        f"{Path(f).stem}.ort.onnx" for f in FILES.values()
    )
    [perf] = steps.run_harness(ws, scenario, "PerformanceOnly").results
    assert perf.resultValidity in ("VALID", "INVALID") and perf.samplesPerSecond
    assert perf.synthetic and perf.backend.startswith("onnxruntime")
    if scenario == "Offline":
        assert perf.valid, (ws.root / perf.logDir / "mlperf_log_summary.txt").read_text()
    [acc] = steps.run_harness(ws, scenario, "AccuracyOnly").results
    assert acc.accuracy == 100.0 and acc.accuracyPassed and acc.accuracyMetric == "100-WER"
    log_dir = ws.harness_dir(scenario, "AccuracyOnly")
    assert "Word Error Rate: 0.0%, accuracy=100.0%" in (log_dir / "accuracy.txt").read_text()
    entries = json.loads((log_dir / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(SAMPLES))
    # int64 labels, one variable-length response per utterance
    labels = [np.frombuffer(bytes.fromhex(e["data"]), "<i8") for e in entries]
    assert all(a.min() >= 0 and a.max() < 28 for a in labels) and len({a.size for a in labels}) > 1


def test_audits_are_judged(root: Path) -> None:
    spec = {**RUNS["Offline"], "batchSize": 1, "audits": ["TEST01", "TEST05"]}
    spec["loadgen"] = {**spec["loadgen"], "performanceSampleCount": SAMPLES}
    ws = workspace(root, "audits", scenarios=["Offline"], testModes=["PerformanceOnly", "AccuracyOnly"], **spec)
    ws.perf_backend_wrapper = lambda b: PacedEncoder(b, 0.4)
    assert steps.run_harness(ws, "Offline", "PerformanceOnly").results[0].valid
    assert steps.run_harness(ws, "Offline", "AccuracyOnly").results[0].accuracy == 100.0
    for test in ("TEST01", "TEST05"):
        [result] = steps.audit(ws, test, "Offline").audits
        assert result.verdict in ("PASS", "NOT JUDGED"), f"{test}: {result.details}"
    assert "TEST PASS" in (ws.audit_dir("TEST01", "Offline") / "verify_accuracy.txt").read_text()


def test_null_backend_offline_is_valid(root: Path) -> None:
    loadgen = {"minDurationMs": 300, "minQueryCount": 1, "expectedQps": 5000}
    ws = workspace(root, "null", backend="null", category="datacenter", batchSize=8, loadgen=loadgen)
    ws.perf_backend_wrapper = lambda b: Paced(b, 0.002)
    [result] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    assert result.valid, (ws.root / result.logDir / "mlperf_log_summary.txt").read_text()
    assert result.backend.startswith("null")


def test_real_format_sources(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PVC holding the FLAC download is converted as the reference does; the graphs come as a tar;
    a .pt checkpoint without torch says what to do (torch hidden where it is installed)."""
    bench = get_benchmark("rnnt")
    [dataset] = (root / "cache" / "dataset").iterdir()
    facts = bench.prepare_dataset(Source(pvc={"claimName": "c", "path": str(dataset)}), tmp_path / "data")
    # the PVC already holds the conversion: used in place
    assert facts["count"] == SAMPLES and facts["root"] == str(dataset)
    flac_only = tmp_path / "flac"
    flac_only.mkdir()
    (flac_only / "LibriSpeech").symlink_to(dataset / "LibriSpeech", target_is_directory=True)
    facts = bench.prepare_dataset(Source(pvc={"claimName": "c", "path": str(flac_only)}), tmp_path / "conv")
    assert facts["count"] == SAMPLES and Path(str(facts["root"])) == tmp_path / "conv"
    assert (tmp_path / "conv" / MANIFEST).read_text() == (dataset / MANIFEST).read_text()
    [model] = (root / "cache" / "model").iterdir()
    with tarfile.open(tmp_path / "rnnt.tar.gz", "w:gz") as tar:
        for name in FILES.values():
            tar.add(model / name, arcname=f"rnnt/{name}")
    got = bench.prepare_model(Source(pvc={"claimName": "c", "path": str(tmp_path / "rnnt.tar.gz")}), tmp_path / "m")
    assert got.name == FILES["encoder"]
    for name in FILES.values():
        assert (tmp_path / "m" / name).read_bytes() == (model / name).read_bytes()
    (tmp_path / "rnnt.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(HarnessError, match=r"rnnt\.pt: converting the RNN-T checkpoint needs torch"):
        bench.prepare_model(Source(pvc={"claimName": "c", "path": str(tmp_path / "rnnt.pt")}), tmp_path / "m2")
