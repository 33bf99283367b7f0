"""A SYNTHETIC KiTS19: CT-like volumes in the real layout, labelled by the FP32 synthetic model.

``<out>/case_XXXXX/imaging.nii.gz`` (int16 HU, KiTS19's axis order and affine style: axis 0 is
the slices, every axis flipped) and ``segmentation.nii.gz`` (uint8), plus ``dataset.json`` and
``README.md`` saying SYNTHETIC. Each case's spacing and size are chosen so that the reference's
preprocessing can be inverted exactly for the labels: an axis either has the target spacing or
half of it (an odd length 2m - 1, so resampling takes every other voxel), and its length leaves a
remainder below 32 modulo 64 (cropped, never padded). The segmentation is then the model's own
prediction on the preprocessed image, placed back in the raw grid, and preprocessing it gives
that prediction again (checked for every case), so FP32 scores mean DICE 1.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import HarnessError
from ...fsutil import atomic_write_text, temp_path_for
from . import kits19
from .sliding_window import infer


def synthetic_ct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth CT-like volume in HU (int16): air outside an ellipsoid body, soft tissue with
    brighter and darker smooth structures inside."""
    from scipy.ndimage import zoom

    coarse = rng.standard_normal(tuple(max(2, s // 8) for s in shape))
    field = zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)[
        tuple(slice(0, s) for s in shape)
    ]
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape], indexing="ij")
    body = sum(g**2 for g in grids) < 0.9
    hu = np.where(body, 60.0 + 140.0 * field, -1000.0)
    return np.asarray(np.clip(hu, -1024, 3000), dtype=np.int16)


def calibration_patches(seed: int, patch: int, n: int = 2) -> np.ndarray:
    """Preprocessed (normalised) synthetic CT patches (n, 1, P, P, P) for the model's output bias."""
    rng = np.random.default_rng([seed, 0xCA1])
    vol = kits19.normalize(synthetic_ct(rng, (patch * 2, patch * 2, patch * 2)).astype(np.float32))
    corners = [(0, 0, 0), (patch // 2, patch // 2, patch // 2), (patch, patch, patch)][:n]
    return np.stack([vol[np.newaxis, i : i + patch, j : j + patch, k : k + patch] for i, j, k in corners]).astype(
        np.float32
    )


def case_plan(seed: int, index: int, roi: int) -> tuple[list[int], list[int], list[bool]]:
    """(preprocessed shape, crop per axis, half-spacing per axis) for one case. Edges are one or
    one and a half patches (multiples of half a patch), crops below a quarter patch (the
    preprocessing crops remainders below that); one axis at most is at half spacing, to keep the
    raw volumes small."""
    rng = np.random.default_rng([seed, index])
    shape = [int(rng.choice([roi, roi, roi * 3 // 2])) for _ in range(3)]
    crop = [int(rng.integers(0, roi * 3 // 16)) for _ in range(3)]
    half = [False, False, False]
    axis = int(rng.integers(0, 4))
    if axis < 3:
        half[axis] = True
    return shape, crop, half


def kits_affine(spacing: list[float]) -> np.ndarray:
    """KiTS19's affine style: data axis 0 (slices) maps to world z, axis 2 to x, all flipped."""
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = -spacing[2], -spacing[1], -spacing[0], 1.0
    return affine


def _save(volume: np.ndarray, affine: np.ndarray, target: Path) -> None:
    import nibabel

    target.parent.mkdir(parents=True, exist_ok=True)
    with temp_path_for(target) as tmp:
        gz = tmp.with_name(tmp.name + ".nii.gz")  # nibabel picks gzip from the name
        nibabel.save(nibabel.Nifti1Image(volume, affine), gz)
        gz.replace(tmp)


def raw_label(prediction: np.ndarray, shape: list[int], crop: list[int], half: list[bool]) -> np.ndarray:
    """The raw-grid segmentation whose preprocessing gives ``prediction`` back: undo the crop
    (zeros where the preprocessing cuts), then repeat each voxel along half-spacing axes."""
    zoomed = np.zeros([s + c for s, c in zip(shape, crop, strict=True)], dtype=np.uint8)
    zoomed[tuple(slice(c // 2, c // 2 + s) for s, c in zip(shape, crop, strict=True))] = prediction
    for axis, h in enumerate(half):
        if h:
            zoomed = np.repeat(zoomed, 2, axis=axis)[
                tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
            ]
    return zoomed


def synthesize_dataset(
    out_dir: Path, seed: int, n: int, model_path: Path, patch: int | None = None, batch_size: int = 4
) -> dict[str, object]:
    """Write ``n`` SYNTHETIC cases into ``out_dir`` labelled by the FP32 model at ``model_path``."""
    import onnxruntime as ort

    from .model import patch_size

    patch = patch or patch_size(model_path)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": np.asarray(sess.run(["output"], feed)[0])}

    cases = [f"case_{i:05d}" for i in range(n)]
    for i, case in enumerate(cases):
        shape, crop, half = case_plan(seed, i, patch)
        spacing = [t / 2 if h else t for t, h in zip(kits19.TARGET_SPACING, half, strict=True)]
        raw_shape = tuple(2 * (s + c) - 1 if h else s + c for s, c, h in zip(shape, crop, half, strict=True))
        affine = kits_affine(spacing)
        case_dir = out_dir / case
        _save(synthetic_ct(np.random.default_rng([seed, i, 1]), raw_shape), affine, case_dir / kits19.IMAGING)
        image = kits19.preprocess_case(case_dir, with_label=False, roi=patch).image  # what preprocess reads back
        prediction = infer(run, {kits19.INPUT: image}, patch, batch_size)[kits19.PREDICTION]
        _save(raw_label(prediction, shape, crop, half), affine, case_dir / kits19.SEGMENTATION)
        label = kits19.preprocess_case(case_dir, roi=patch).label
        if label is None or not np.array_equal(label[0], prediction):
            raise HarnessError(f"{case_dir}: the synthetic labels do not survive preprocessing (a bug in synthetic.py)")
    facts: dict[str, object] = {
        "synthetic": True,
        "seed": seed,
        "cases": cases,
        "model": model_path.name,
        "patch": patch,
    }
    atomic_write_text(out_dir / kits19.DATASET_JSON, json.dumps(facts, indent=2))
    atomic_write_text(
        out_dir / "README.md",
        f"SYNTHETIC KiTS19 ({n} cases, seed {seed}): generated CT-like volumes, segmentations are the "
        f"random-weight synthetic 3D U-Net's own predictions ({model_path.name}). Not patient data.\n",
    )
    return facts
