"""A SYNTHETIC BraTS 2019 in nnU-Net's Task043 layout, labelled by the FP32 synthetic model.

``imagesTr/<case>_000{0..3}.nii.gz`` (int16 MR-like intensities inside an ellipsoid 'brain', 0
outside, 1 mm voxels), ``labelsTr/<case>.nii.gz`` (uint8, 0..3) and nnU-Net's ``dataset.json``
(which says SYNTHETIC and lists the cases). Each label volume is what scoring makes of the
model's own float16 output for the preprocessed case, so FP32 scores mean DICE 1.0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import HarnessError
from ...fsutil import atomic_write_text, temp_path_for
from . import brats
from .model import BRATS19, build_arch, input_shape, save

# Raw (z, y, x) volume per model size: BraTS' 155 x 240 x 240, or a small one for CI.
RAW_SHAPE = {"full": (155, 240, 240), "small": (48, 72, 40)}


def synthetic_brain(rng: np.random.Generator, raw: tuple[int, ...], fits: tuple[int, ...]) -> np.ndarray:
    """(4, z, y, x) int16: smooth per-modality intensities inside an ellipsoid that fits in ``fits``."""
    from scipy.ndimage import zoom

    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in raw], indexing="ij")
    radii = [min(0.45 * s, (f - 4) / 2) * rng.uniform(0.8, 1.0) for s, f in zip(raw, fits, strict=True)]
    centre = [s / 2 + rng.uniform(-2, 2) for s in raw]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) < 1.0
    out = np.zeros((brats.MODALITIES, *raw), dtype=np.int16)
    for m in range(brats.MODALITIES):
        coarse = rng.standard_normal(tuple(max(2, s // 8) for s in raw))
        field = zoom(coarse, [s / c for s, c in zip(raw, coarse.shape, strict=True)], order=1)
        field = field[tuple(slice(0, s) for s in raw)]
        out[m] = np.where(inside, np.clip(400 + 150 * m + 120 * field, 1, 3000), 0).astype(np.int16)
    return out


def calibration_volume(seed: int, size: str) -> np.ndarray:
    arch = BRATS19[size]
    rng = np.random.default_rng([seed, 0xB4A])
    data = synthetic_brain(rng, RAW_SHAPE[size], arch.shape).astype(np.float32)
    volume, _ = brats.preprocess_volume(data, np.ones(3), arch.shape)
    return volume[np.newaxis]


def build_model(path: Path, seed: int, size: str = "small") -> Path:
    """The synthetic BraTS 3D U-Net (nnU-Net's Generic_UNet) for ``seed``, head calibrated on a
    synthetic brain from the same seed."""
    if size not in BRATS19:
        raise HarnessError(f"3d-unet BraTS model size {size!r}: use 'small' or 'full'")
    return save(build_arch(seed, BRATS19[size], calibration_volume(seed, size)), path)


def _write(volume_zyx: np.ndarray, target: Path) -> None:
    import nibabel

    target.parent.mkdir(parents=True, exist_ok=True)
    with temp_path_for(target) as tmp:
        gz = tmp.with_name(tmp.name + ".nii.gz")  # nibabel picks gzip from the name
        nibabel.save(nibabel.Nifti1Image(volume_zyx.transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0])), gz)
        gz.replace(tmp)


def synthesize_dataset(out_dir: Path, seed: int, n: int, model_path: Path) -> dict[str, Any]:
    """Write ``n`` SYNTHETIC cases into ``out_dir`` (the Task043 folder) labelled by the FP32 model."""
    import onnxruntime as ort

    shape = input_shape(model_path, brats.MODALITIES)
    size = next((k for k, a in BRATS19.items() if a.shape == shape), None)
    raw = RAW_SHAPE[size] if size else tuple(s + 16 for s in shape)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    cases = [f"HGG__BraTS19_SYNTH_{i:03d}_1" for i in range(n)]
    for i, case in enumerate(cases):
        data = synthetic_brain(np.random.default_rng([seed, i]), raw, shape)
        for m in range(brats.MODALITIES):
            _write(data[m], out_dir / "imagesTr" / f"{case}_{m:04d}.nii.gz")
        loaded, spacing = brats.load_case(out_dir, case)  # what preprocess will read back
        volume, facts = brats.preprocess_volume(loaded, spacing, shape, case)
        logits = sess.run([brats.OUTPUT], {brats.INPUT: volume[np.newaxis]})[0][0].astype(np.float16)
        _write(brats.segmentation(logits, facts), out_dir / "labelsTr" / f"{case}.nii.gz")
    meta = {
        "name": "BraTS2019",
        "description": f"SYNTHETIC (seed {seed}): generated volumes labelled by the random-weight synthetic 3D U-Net",
        "synthetic": True,
        "seed": seed,
        "padded_shape": list(shape),
        "tensorImageSize": "4D",
        "modality": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enhancing"},
        "numTraining": n,
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [],
        "validation": cases,
    }
    atomic_write_text(out_dir / "dataset.json", json.dumps(meta, indent=2))
    return meta
