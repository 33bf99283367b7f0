"""3d-unet in v1.0 (BraTS 2019) through the real steps: the round picks the implementation and its
artifacts, the synthetic Generic_UNet and Task043 set, whole-volume inference on real LoadGen +
onnxruntime in every scenario v1.0's edge allows (SingleStream and Offline), both modes, TEST01,
a corrupted SUT scoring below target, the report; the null backend; v6.1 keeps KiTS19."""

from __future__ import annotations

import itertools
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from harness_support import make_spec
from mlperf_harness import artifacts, steps
from mlperf_harness.backends.base import Tensors
from mlperf_harness.backends.faulty import Paced
from mlperf_harness.benchmarks import get_benchmark
from mlperf_harness.benchmarks.unet3d import Unet3D, brats, source_root
from mlperf_harness.benchmarks.unet3d.brats_benchmark import Unet3DBraTS
from mlperf_harness.benchmarks.unet3d.model import build_model as build_kits_model
from mlperf_harness.errors import HarnessError
from mlperf_harness.report import run_report
from mlperf_harness.samples import SampleStore
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_harness.workspace import Workspace

CASES = 3
TARGET = 0.853
LINE = "Accuracy: mean = 1.00000, whole tumor = 1.0000, tumor core = 1.0000, enhancing tumor = 1.0000"
BASE: dict[str, Any] = {
    "benchmark": "3d-unet",
    "suite": "v1.0",
    "category": "edge",
    "batchSize": 1,
    "dataset": {"synthetic": {"samples": CASES, "seed": 5}},
    "model": {"synthetic": {"seed": 5}},
}
# Short runs: a case of the small model (4 x 64 x 64 x 32) takes some 0.05 s here; paced to 0.1 s.
RUNS: dict[str, dict[str, Any]] = {
    "Offline": {"loadgen": {"minDurationMs": 200, "minQueryCount": CASES, "expectedQps": 4}},
    "SingleStream": {"loadgen": {"minDurationMs": 200, "minQueryCount": 4, "targetLatencyMs": 100}},
}
PACE = 0.1
_names = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("brats-work")
    ws = Workspace(make_spec(**BASE), root, "prepare", quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess, steps.build_engine):
        assert step(ws).ok
    return root


def workspace(workdir: Path, **over: Any) -> Workspace:
    return Workspace(make_spec(**{**BASE, **over}), workdir, f"b{next(_names)}", quiet=True)


def test_the_round_picks_the_implementation_and_its_artifacts() -> None:
    assert type(get_benchmark("3d-unet", "v1.0")) is Unet3DBraTS
    assert type(get_benchmark("3d-unet", "v6.1")) is Unet3D  # KiTS19, the current round's
    v1, v6 = make_spec(**BASE), make_spec(**{**BASE, "suite": "v6.1"})
    assert type(Workspace(v1, Path("w")).bench) is Unet3DBraTS and type(Workspace(v6, Path("w")).bench) is Unet3D
    # Same sources, other round: no dataset, preprocessed set, model or engine is shared.
    for kind in (artifacts.dataset, artifacts.model, artifacts.preprocessed):
        a, b = kind(v1), kind(v6)
        assert a.key.startswith("3d-unet-brats19-") and b.key.startswith("3d-unet-") and a.key != b.key
    assert artifacts.engine(v1, "Offline", "1").key != artifacts.engine(v6, "Offline", "1").key


def test_store_and_the_reference_layout(workdir: Path) -> None:
    ws = workspace(workdir)
    store = SampleStore(ws.preprocessed_dir)
    assert store.count == CASES and store.facts["synthetic"]
    assert {tuple(store.sample(i)["input"].shape) for i in range(CASES)} == {(4, 64, 64, 32)}
    cases = pickle.loads((ws.preprocessed_dir / "preprocessed_files.pkl").read_bytes())
    assert cases == [f"HGG__BraTS19_SYNTH_{i:03d}_1" for i in range(CASES)]
    for i, case in enumerate(cases):  # what accuracy-brats.py reads: [volume, properties], labelsTr/
        volume, props = pickle.loads((ws.preprocessed_dir / f"{case}.pkl").read_bytes())
        np.testing.assert_array_equal(volume, store.sample(i)["input"])
        assert {"crop_bbox", "size_after_cropping", "itk_spacing", "itk_origin", "itk_direction"} <= set(props)
        assert (ws.preprocessed_dir / "labelsTr" / f"{case}.nii.gz").is_file()


@pytest.mark.parametrize("scenario", list(RUNS))
def test_scenario_both_modes_and_test01(workdir: Path, scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace(workdir, scenarios=[scenario], testModes=["PerformanceOnly", "AccuracyOnly"], **RUNS[scenario])
    ws.perf_backend_wrapper = lambda b: Paced(b, PACE)
    [perf] = steps.run_harness(ws, scenario, "PerformanceOnly").results
    assert perf.resultValidity in ("VALID", "INVALID") and perf.samplesPerSecond and perf.latencyNs is not None
    assert perf.device == "cpu" and perf.synthetic and not perf.submittable
    if scenario == "Offline":  # v1.0 SingleStream has no early stopping, but 4 queries may miss 0.2 s
        assert perf.valid, (ws.root / perf.logDir / "mlperf_log_summary.txt").read_text()

    [acc] = steps.run_harness(ws, scenario, "AccuracyOnly").results
    assert LINE in capsys.readouterr().out.splitlines()
    assert acc.accuracy == 1.0 and acc.accuracyPassed and acc.accuracyMetric == "mean DICE"
    assert acc.accuracyTarget == pytest.approx(TARGET * 0.99, abs=1e-4)
    log_dir = ws.root / acc.logDir
    assert (log_dir / "accuracy.txt").read_text().splitlines()[1] == LINE
    entries = json.loads((log_dir / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(CASES))
    assert {len(e["data"]) // 2 for e in entries} == {2 * 4 * 64 * 64 * 32}  # float16 (4, D, H, W) per case

    [audit] = steps.audit(ws, "TEST01", scenario).audits
    assert audit.verdict in ("PASS", "NOT JUDGED"), audit.details
    text = (ws.audit_dir("TEST01", scenario) / "verify_accuracy.txt").read_text()
    assert "TEST PASS" in text and "fallback" not in text  # logged responses equal the accuracy run's
    assert run_report(ws).ok
    [readme] = (ws.run_dir / "submission").rglob(f"measurements/*/3d-unet-99/{scenario}/README.md")
    assert "accuracy-brats.py" in readme.read_text() and "--output_dtype float16" in readme.read_text()


def test_high_accuracy_target_is_99_9(workdir: Path) -> None:
    ws = workspace(workdir, testModes=["AccuracyOnly"], configVer="high_accuracy", **RUNS["Offline"])
    [acc] = steps.run_harness(ws, "Offline", "AccuracyOnly").results
    assert acc.accuracyPassed and acc.accuracyTarget == pytest.approx(TARGET * 0.999, abs=1e-4)


class SwappedRegions(Paced):
    """Edema and enhancing tumour logits swapped: outputs of the right shape, wrong labels."""

    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]:
        return {name: out[:, [0, 3, 2, 1]] if out.ndim == 5 else out for name, out in super().predict(feeds).items()}


def test_a_corrupted_sut_fails_test01_and_scores_below_target(workdir: Path) -> None:
    ws = workspace(workdir, testModes=["PerformanceOnly", "AccuracyOnly"], **RUNS["Offline"])
    steps.run_harness(ws, "Offline", "AccuracyOnly")
    ws.perf_backend_wrapper = lambda b: SwappedRegions(b, PACE)
    steps.run_harness(ws, "Offline", "PerformanceOnly")
    [audit] = steps.audit(ws, "TEST01", "Offline").audits
    assert audit.verdict == "FAIL"
    acc_dir = ws.audit_dir("TEST01", "Offline") / "accuracy"
    # The official fallback scores the logged cases both ways: 1.0 against below the round's target.
    assert (acc_dir / "baseline_accuracy.txt").read_text().startswith("Accuracy: mean = 1.00000")
    compliance = float((acc_dir / "compliance_accuracy.txt").read_text().split()[3].rstrip(","))
    assert compliance < TARGET * 0.99


def test_null_backend_offline_is_valid(workdir: Path) -> None:
    over = {"loadgen": {"minDurationMs": 200, "minQueryCount": 1, "expectedQps": 200}}
    ws = workspace(workdir, testModes=["PerformanceOnly"], backend="null", **over)
    ws.perf_backend_wrapper = lambda b: Paced(b, 0.01)  # 0.01 s a case: the 44 cases issued outlast 0.2 s
    [result] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    assert result.valid, (ws.root / result.logDir / "mlperf_log_summary.txt").read_text()


def test_bad_inputs_name_the_file_and_the_fix(workdir: Path, tmp_path: Path) -> None:
    bench = Unet3DBraTS()
    with pytest.raises(HarnessError, match="no imagesTr/ folder; give nnU-Net's Task043_BraTS2019"):
        bench.find_root(tmp_path)
    kits = build_kits_model(tmp_path / "kits.onnx", 1, "small")  # one input channel, not four
    with pytest.raises(HarnessError, match=r"kits\.onnx: input 'input' has shape .* expected \(N, 4, D, H, W\)"):
        bench.check_model(kits)
    root = source_root(workspace(workdir).dataset_dir)
    (tmp_path / "data").mkdir()
    shutil.copytree(root / "imagesTr", tmp_path / "data" / "imagesTr")
    shutil.copy(root / "dataset.json", tmp_path / "data")
    with pytest.raises(HarnessError, match=r"labelsTr/HGG__BraTS19_SYNTH_000_1\.nii\.gz: missing ground truth"):
        list(brats.preprocess(tmp_path / "data", tmp_path / "pre"))


def test_the_example_is_a_v1_0_brats_run() -> None:
    path = Path(__file__).parents[2] / "examples" / "3d-unet-brats-v1.0-offline.yaml"
    spec = MLPerfRunSpec.model_validate(yaml.safe_load(path.read_text())["spec"])
    assert spec.suite == "v1.0" and type(get_benchmark(spec.benchmark, spec.suite)) is Unet3DBraTS
