"""3d-unet's full-size synthetic cases (``dataset.synthetic.size: full``): KiTS19's preprocessed
shapes and their windows, the subsets below 43, a tiny generation on the small model through the
benchmark's download-data, the dataset key, and the pytorch labeller on the CPU (its GPU run is in
test_harness_gpu.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from harness_support import make_spec
from mlperf_harness import artifacts
from mlperf_harness.benchmarks import get_benchmark
from mlperf_harness.benchmarks.unet3d import build_model, kits19
from mlperf_harness.benchmarks.unet3d.sliding_window import window_origins
from mlperf_harness.benchmarks.unet3d.synthetic import case_windows, kits19_cases, kits19_plan, synthesize_dataset
from mlperf_harness.errors import HarnessError
from mlperf_harness.spec import MLPerfRunSpec, Source, SyntheticSource

# 128^3 windows per inference case after the reference's preprocessing, in the reference's case order
# (from the real labels of github.com/neheller/kits19, see kits19.PREPROCESSED_SHAPES).
WINDOWS = [
    50, 50, 108, 64, 48, 27, 100, 16, 100, 50, 50, 48, 36, 32, 100, 32, 32, 50, 48, 144, 64, 16,
    64, 64, 16, 144, 100, 16, 50, 8, 50, 36, 64, 80, 144, 125, 27, 96, 96, 45, 50, 96, 125,
]  # fmt: skip


def test_the_table_is_the_43_cases_and_their_windows() -> None:
    assert list(kits19.PREPROCESSED_SHAPES) == kits19.INFERENCE_CASES
    assert [case_windows(c) for c in kits19.INFERENCE_CASES] == WINDOWS
    assert sum(WINDOWS) == 2761  # 64.2 a case: what a published cases/s figure walks
    assert kits19.PREPROCESSED_SHAPES["case_00400"] == kits19.PREPROCESSED_SHAPES["case_00185"]  # the duplicate
    for shape in kits19.PREPROCESSED_SHAPES.values():
        assert all(s % 64 == 0 and s >= 128 for s in shape)


@pytest.mark.parametrize("patch", [128, 32])
def test_the_plan_has_the_real_shapes_and_windows_at_any_patch(patch: int) -> None:
    for case, windows in zip(kits19.INFERENCE_CASES, WINDOWS, strict=True):
        shape, crop, half = kits19_plan(case, patch)
        assert [s * 128 // patch for s in shape] == list(kits19.PREPROCESSED_SHAPES[case])
        assert crop == [0, 0, 0] and half == [False, False, False]
        assert len(window_origins(shape, patch)) == windows


def test_subsets_spread_as_the_whole_set() -> None:
    assert kits19_cases(43) == kits19.INFERENCE_CASES
    mean = sum(WINDOWS) / 43
    for n in (4, 8, 16):
        picked = kits19_cases(n)
        assert len(set(picked)) == n and picked == [c for c in kits19.INFERENCE_CASES if c in picked]
        assert abs(sum(case_windows(c) for c in picked) / n - mean) < 0.15 * mean
    for n in (0, 44):
        with pytest.raises(HarnessError, match=r"dataset\.synthetic\.samples"):
            kits19_cases(n)


def test_full_cases_through_download_data(tmp_path: Path) -> None:
    """Two full-size cases for the small model (32^3 patches: a quarter of the real edges, the same
    windows), made by the benchmark's download-data step, say what they are and preprocess to their
    plan (synthesize_dataset checks that the labels survive preprocessing)."""
    source = Source(synthetic=SyntheticSource(samples=2, seed=5, size="full"))
    facts = get_benchmark("3d-unet").prepare_dataset(source, tmp_path, size="small", quiet=True)
    root = Path(str(facts["root"]))
    meta = json.loads((root / kits19.DATASET_JSON).read_text())
    assert meta["size"] == "full" and meta["shapesOf"] == kits19_cases(2) and meta["labelledBy"].startswith("onnx")
    assert "SYNTHETIC" in (root / "README.md").read_text()
    for case, real in zip(meta["cases"], meta["shapesOf"], strict=True):
        image = kits19.preprocess_case(root / case, roi=32)
        assert image.image.shape[1:] == tuple(s // 4 for s in kits19.PREPROCESSED_SHAPES[real])
        assert image.label is not None and len(np.unique(image.label)) > 1  # the model's segmentation


def test_the_dataset_key_carries_full_and_keeps_small_keys() -> None:
    def spec(size: str) -> MLPerfRunSpec:
        return make_spec(benchmark="3d-unet", suite="v6.1", dataset={"synthetic": {"samples": 43, "size": size}})

    small, full = artifacts.dataset(spec("small")), artifacts.dataset(spec("full"))
    assert "size" not in small.inputs and full.inputs["size"] == "full" and small.key != full.key
    assert artifacts.preprocessed(spec("small")).key != artifacts.preprocessed(spec("full")).key
    # Another benchmark ignores a dataset's size: the same data, the same key (BraTS's included).
    for bench, suite in (("resnet50", "v6.1"), ("3d-unet", "v1.0")):
        keys = {artifacts.dataset(make_spec(benchmark=bench, suite=suite, dataset={"synthetic": {"size": s}})).key
                for s in ("small", "full")}  # fmt: skip
        assert len(keys) == 1, bench


def test_pytorch_labels_as_onnxruntime_on_the_cpu(tmp_path: Path) -> None:
    """The labeller full-size cases use where torch sees a GPU, here on the CPU: the same fp32 model
    through the harness's pytorch backend labels (nearly) every voxel as onnxruntime does."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    model = build_model(tmp_path / "m.onnx", 5, "small")
    labels = {}
    for labeller in (None, "pytorch"):
        out = tmp_path / str(labeller)
        facts = synthesize_dataset(out, 5, 1, model, batch_size=1, size="full", labeller=labeller)
        assert str(facts["labelledBy"]).startswith("pytorch cpu" if labeller else "onnxruntime")
        img: nibabel.Nifti1Image = nibabel.load(out / "case_00000" / kits19.SEGMENTATION)  # type: ignore[assignment]
        labels[labeller] = np.asarray(img.dataobj)
    assert np.mean(labels[None] == labels["pytorch"]) > 0.999


def test_cases_made_in_threads_are_the_cases_made_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a torch labeller (a GPU's, here on the CPU) cases are made in threads: the same files,
    byte for byte, as one at a time."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from mlperf_harness.benchmarks.unet3d import synthetic

    model = build_model(tmp_path / "m.onnx", 5, "small")
    made = {}
    for threads in (1, 3):
        monkeypatch.setattr(synthetic, "CASE_THREADS", threads)
        out = tmp_path / f"threads-{threads}"
        synthesize_dataset(out, 5, 3, model, batch_size=1, size="small", labeller="pytorch")
        made[threads] = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*.nii.gz"))}
    assert len(made[1]) == 6 and made[1] == made[3]


@pytest.mark.parametrize("order", [0, 1])
def test_resampling_that_keeps_the_shape_is_zooms_identity(order: int) -> None:
    """A header spacing of float32 targets (every synthetic case, some real ones on an axis) gives
    zoom factors a hair off 1 and the same shape: skipped, it returns what zoom returns."""
    from scipy.ndimage import zoom

    volume = np.random.default_rng(order).standard_normal((37, 64, 51)).astype(np.float32)
    spacing = np.float32(kits19.TARGET_SPACING).tolist()
    factor = np.array(spacing) / np.array(kits19.TARGET_SPACING)
    want = zoom(volume, factor, order=order, mode="constant", cval=volume.min(), grid_mode=False)
    assert np.array_equal(kits19.resample(volume, spacing, order), want)
    coarse = [2 * s for s in spacing]  # a real resampling still happens
    assert kits19.resample(volume, coarse, order).shape == (74, 128, 102)
