"""3d-unet (KiTS19) preprocessing and sliding window against the reference's operations, written
out here in plain numpy/scipy (preprocess.py, inference_utils.py, base_SUT.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pytest
from mlperf_harness.benchmarks.unet3d import kits19
from mlperf_harness.benchmarks.unet3d.sliding_window import class_argmax, gaussian_importance, infer, window_origins
from mlperf_harness.errors import HarnessError
from scipy import ndimage, signal


def _write_case(case_dir: Path, spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(7)
    image = rng.normal(80.0, 200.0, shape).astype(np.int16)
    label = rng.integers(0, 3, shape).astype(np.uint8)
    affine = np.array([[0, 0, -spacing[2], 10.0], [0, -spacing[1], 0, 20.0], [-spacing[0], 0, 0, 30.0], [0, 0, 0, 1]])
    case_dir.mkdir(parents=True)
    nibabel.save(nibabel.Nifti1Image(image, affine), case_dir / "imaging.nii.gz")
    nibabel.save(nibabel.Nifti1Image(label, affine), case_dir / "segmentation.nii.gz")


def _reference(case_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """preprocess.py's steps for one case, ROI 128, overlap 0.5."""
    img: Any = nibabel.load(case_dir / "imaging.nii.gz")
    seg: Any = nibabel.load(case_dir / "segmentation.nii.gz")
    spacing = img.header["pixdim"][1:4].tolist()
    image = img.get_fdata().astype(np.float32)
    label = seg.get_fdata().astype(np.uint8)
    factor = np.array(spacing) / np.array([1.6, 1.2, 1.2])
    image = ndimage.zoom(image, factor, order=1, mode="constant", cval=image.min(), grid_mode=False)
    label = ndimage.zoom(label, factor, order=0, mode="constant", cval=label.min(), grid_mode=False)
    image, label = image[None], label[None]
    image = (np.clip(image, -79.0, 304.0) - 101.0) / 76.9
    for axis in (1, 2, 3):  # edge padding up to 128
        short = max(0, 128 - image.shape[axis])
        widths = [(0, 0)] * 4
        widths[axis] = (short // 2, short - short // 2)
        image, label = np.pad(image, widths, mode="edge"), np.pad(label, widths, mode="edge")
    for axis in (1, 2, 3):  # crop a remainder below 32, then constant-pad to a multiple of 64
        n = image.shape[axis]
        cut = n % 64 if n % 64 < 32 else 0
        keep = np.arange(cut // 2, n - (cut - cut // 2))
        image, label = np.take(image, keep, axis=axis), np.take(label, keep, axis=axis)
        n = image.shape[axis]
        grow = (64 - n % 64) % 64
        if n + grow < 128:
            grow += 64
        widths = [(0, 0)] * 4
        widths[axis] = (grow // 2, grow - grow // 2)
        image = np.pad(image, widths, constant_values=-2.2)
        label = np.pad(label, widths, constant_values=0)
    affine = img.affine.copy()
    for row in range(3):
        col = int(np.nonzero(img.affine[row, :3])[0][0])
        affine[row, col] = np.sign(img.affine[row, col]) * [1.6, 1.2, 1.2][col]
    return image.astype(np.float32), label.astype(np.uint8), affine


def test_preprocess_case_matches_the_reference(tmp_path: Path) -> None:
    # After resampling: 47 (edge-padded to 128), 150 (cropped to 128), 170 (padded to 192).
    _write_case(tmp_path / "case_00000", (2.5, 0.8, 0.75), (30, 225, 272))
    case = kits19.preprocess_case(tmp_path / "case_00000")
    image, label, affine = _reference(tmp_path / "case_00000")
    assert case.image.shape == (1, 128, 128, 192) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.image, image)
    assert case.label is not None
    np.testing.assert_array_equal(case.label, label)
    np.testing.assert_array_equal(case.aux["reshaped_affine"], affine)
    assert case.aux["image_shape"] == (1, 128, 128, 192)


def test_dataset_order_and_reference_layout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for case in kits19.INFERENCE_CASES:
        if case != "case_00400":  # the reference's Makefile copies case_00185 to case_00400
            (data / case).mkdir(parents=True)
    assert kits19.case_list(data) == kits19.INFERENCE_CASES and len(kits19.INFERENCE_CASES) == kits19.DATASET_SIZE
    (data / "case_00012").rmdir()
    with pytest.raises(HarnessError, match="case_00012: missing KiTS19 case"):
        kits19.case_list(data)


def test_unreadable_volume_names_the_file(tmp_path: Path) -> None:
    _write_case(tmp_path / "case_00000", (1.6, 1.2, 1.2), (20, 20, 20))
    path = tmp_path / "case_00000" / "imaging.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(HarnessError, match=r"imaging\.nii\.gz: not a readable NIfTI volume"):
        kits19.preprocess_case(tmp_path / "case_00000")


def test_gaussian_importance_matches_the_reference() -> None:
    g1 = signal.windows.gaussian(128, 0.125 * 128)
    g3 = np.outer(np.outer(g1, g1), g1).reshape(128, 128, 128)
    g3 = np.cbrt(g3)
    g3 /= g3.max()
    np.testing.assert_array_equal(gaussian_importance(128), g3.astype(np.float32))


def _fake_model(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A cheap deterministic stand-in for the network: 3 'logits' per voxel from the patch."""
    x = feed["input"]
    out = np.concatenate([np.sin(3 * x), np.cos(2 * x), x * x - 0.5], axis=1)
    return {"output": out.astype(np.float32)}


def _reference_sliding_window(image: np.ndarray, roi: int) -> bytes:
    """base_SUT.infer_single_query with one patch per model call; returns the logged bytes."""
    image = image[np.newaxis]
    result = np.zeros((1, 3, *image.shape[2:]), dtype=image.dtype)
    norm_map = np.zeros_like(result)
    g1 = signal.windows.gaussian(roi, 0.125 * roi)
    patch_weight = np.cbrt(np.outer(np.outer(g1, g1), g1).reshape(roi, roi, roi))
    patch_weight = (patch_weight / patch_weight.max()).astype(norm_map.dtype)
    stride = roi // 2
    size = [(s - roi) // stride + 1 for s in image.shape[2:]]
    for i in range(0, stride * size[0], stride):
        for j in range(0, stride * size[1], stride):
            for k in range(0, stride * size[2], stride):
                window = (Ellipsis, slice(i, i + roi), slice(j, j + roi), slice(k, k + roi))
                result[window] += _fake_model({"input": image[window]})["output"].squeeze(0) * patch_weight
                norm_map[window] += patch_weight
    result /= norm_map
    return np.expand_dims(np.argmax(result, axis=1).astype(np.uint8), 0).tobytes()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_sliding_window_matches_the_reference(batch_size: int) -> None:
    image = np.random.default_rng(3).standard_normal((1, 64, 48, 80)).astype(np.float32)
    got = infer(_fake_model, {"input": image}, patch=32, batch_size=batch_size)["prediction"]
    assert got.shape == (64, 48, 80) and got.dtype == np.uint8
    assert got.tobytes() == _reference_sliding_window(image, 32)


def test_class_argmax_is_numpys_with_ties_to_the_first_class() -> None:
    rng = np.random.default_rng(0)
    for scores in (rng.standard_normal((3, 9, 10, 11)), rng.integers(0, 3, (3, 9, 10, 11))):  # ints: many ties
        scores = scores.astype(np.float32)
        got = class_argmax(scores)
        assert got.dtype == np.uint8 and np.array_equal(got, np.argmax(scores, axis=0))


def test_window_origins_cover_the_volume() -> None:
    origins = window_origins((128, 192, 256), 128)
    assert len(origins) == 1 * 2 * 3 and origins[0] == (0, 0, 0) and origins[-1] == (0, 64, 128)
    with pytest.raises(HarnessError, match="at least the patch"):
        window_origins((64, 128, 128), 128)
