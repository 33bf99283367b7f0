"""BraTS 2019 (v1.0's 3d-unet): nnU-Net's preprocessing, whole-volume inference, region DICE.

The dataset is nnU-Net's Task043 layout: ``imagesTr/<case>_000{0,1,2,3}.nii.gz`` (T1, T1ce, T2,
FLAIR) and ``labelsTr/<case>.nii.gz`` (0 background, 1 edema, 2 non-enhancing, 3 enhancing),
with 1 mm isotropic voxels; the QSL is validation fold 1 (67 cases). Arrays are in SimpleITK's
(z, y, x) order, which is what nnU-Net works in.

Preprocessing, as the reference (nnU-Net's ``preprocess_test_case`` and ``pad_nd_image``): crop
all modalities to the bounding box of the voxels non-zero in any modality (holes filled); per
modality, z-score the voxels inside that mask in float64 (std + 1e-8) and zero the rest; centre
in a 224 x 224 x 160 volume padded with zeros. The model runs once per case; the response is the
``output`` head as float16, (4, 224, 224, 160). Scoring, as accuracy-brats.py: strip the padding,
argmax, put the labels back into the uncropped volume, DICE of whole tumour (1, 2, 3), tumour core
(2, 3) and enhancing tumour (3) per case (NaN when both are empty, medpy's 0 when only the
prediction is), NaN-mean per region written with 4 decimals, and their mean.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.base import TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_bytes, atomic_write_text

INPUT = "input"
OUTPUT = "output"
MODALITIES = 4
CLASSES = 4
PADDED_SHAPE = (224, 224, 160)
TARGET_SPACING = (1.0, 1.0, 1.0)
REGIONS = {"whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
# Round values (v1.0).
FOLD1_CASES = [
    "HGG__BraTS19_2013_13_1",
    "HGG__BraTS19_2013_19_1",
    "HGG__BraTS19_2013_27_1",
    "HGG__BraTS19_CBICA_AAG_1",
    "HGG__BraTS19_CBICA_ALN_1",
    "HGG__BraTS19_CBICA_ANV_1",
    "HGG__BraTS19_CBICA_AOH_1",
    "HGG__BraTS19_CBICA_APK_1",
    "HGG__BraTS19_CBICA_APR_1",
    "HGG__BraTS19_CBICA_AQG_1",
    "HGG__BraTS19_CBICA_AQP_1",
    "HGG__BraTS19_CBICA_ARZ_1",
    "HGG__BraTS19_CBICA_ASF_1",
    "HGG__BraTS19_CBICA_ASG_1",
    "HGG__BraTS19_CBICA_ATP_1",
    "HGG__BraTS19_CBICA_ATX_1",
    "HGG__BraTS19_CBICA_AUA_1",
    "HGG__BraTS19_CBICA_AVJ_1",
    "HGG__BraTS19_CBICA_AVV_1",
    "HGG__BraTS19_CBICA_AWG_1",
    "HGG__BraTS19_CBICA_AXL_1",
    "HGG__BraTS19_CBICA_AXQ_1",
    "HGG__BraTS19_CBICA_BAN_1",
    "HGG__BraTS19_CBICA_BBG_1",
    "HGG__BraTS19_CBICA_BGE_1",
    "HGG__BraTS19_CBICA_BHQ_1",
    "HGG__BraTS19_CBICA_BIC_1",
    "HGG__BraTS19_CBICA_BNR_1",
    "HGG__BraTS19_TCIA01_131_1",
    "HGG__BraTS19_TCIA01_147_1",
    "HGG__BraTS19_TCIA01_180_1",
    "HGG__BraTS19_TCIA01_190_1",
    "HGG__BraTS19_TCIA01_221_1",
    "HGG__BraTS19_TCIA01_335_1",
    "HGG__BraTS19_TCIA01_411_1",
    "HGG__BraTS19_TCIA02_151_1",
    "HGG__BraTS19_TCIA02_321_1",
    "HGG__BraTS19_TCIA02_331_1",
    "HGG__BraTS19_TCIA02_368_1",
    "HGG__BraTS19_TCIA02_471_1",
    "HGG__BraTS19_TCIA03_257_1",
    "HGG__BraTS19_TCIA03_474_1",
    "HGG__BraTS19_TCIA04_111_1",
    "HGG__BraTS19_TCIA04_328_1",
    "HGG__BraTS19_TCIA04_343_1",
    "HGG__BraTS19_TCIA05_277_1",
    "HGG__BraTS19_TCIA05_478_1",
    "HGG__BraTS19_TCIA06_165_1",
    "HGG__BraTS19_TCIA08_105_1",
    "HGG__BraTS19_TCIA08_280_1",
    "HGG__BraTS19_TMC_15477_1",
    "HGG__BraTS19_TMC_21360_1",
    "HGG__BraTS19_TMC_30014_1",
    "LGG__BraTS19_TCIA09_428_1",
    "LGG__BraTS19_TCIA10_175_1",
    "LGG__BraTS19_TCIA10_276_1",
    "LGG__BraTS19_TCIA10_393_1",
    "LGG__BraTS19_TCIA10_408_1",
    "LGG__BraTS19_TCIA10_410_1",
    "LGG__BraTS19_TCIA10_449_1",
    "LGG__BraTS19_TCIA10_490_1",
    "LGG__BraTS19_TCIA10_625_1",
    "LGG__BraTS19_TCIA10_637_1",
    "LGG__BraTS19_TCIA12_249_1",
    "LGG__BraTS19_TCIA12_466_1",
    "LGG__BraTS19_TCIA13_615_1",
    "LGG__BraTS19_TCIA13_630_1",
]
DATASET_SIZE = 67
PERFORMANCE_SAMPLE_COUNT = 16
SCENARIOS = ("Offline", "SingleStream")
REFERENCE_DICE = 0.853  # the v1.0 target's FP32 mean DICE; pass at 99 % and 99.9 % of it
SAMPLE_SPEC = TensorSpec(INPUT, (MODALITIES, *PADDED_SHAPE), "float32")
RESPONSE_SPEC = TensorSpec(OUTPUT, (CLASSES, *PADDED_SHAPE), "float16")
CASES_JSON = "cases.json"
LABELS_DIR = "labelsTr"


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume as SimpleITK's array (z, y, x), float32, and its spacing (z, y, x)."""
    import nibabel

    if not path.is_file():
        raise HarnessError(f"{path}: missing file (BraTS in nnU-Net's Task043 layout: imagesTr/, labelsTr/)")
    try:
        img: Any = nibabel.load(path)
        data = np.asarray(img.get_fdata(), dtype=np.float32)
        spacing = np.array(img.header.get_zooms()[:3], dtype=np.float64)[::-1]
    except Exception as exc:  # nibabel, gzip and zlib each raise their own kind
        raise HarnessError(f"{path}: not a readable NIfTI volume ({exc}); download the case again") from None
    if data.ndim != 3:
        raise HarnessError(f"{path}: a {data.ndim}-D volume; BraTS volumes are 3-D")
    return np.ascontiguousarray(data.transpose(2, 1, 0)), spacing


def load_case(dataset_dir: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    volumes = [read_volume(dataset_dir / "imagesTr" / f"{case}_{m:04d}.nii.gz") for m in range(MODALITIES)]
    shapes = {v.shape for v, _ in volumes}
    if len(shapes) != 1:
        raise HarnessError(f"{dataset_dir / 'imagesTr' / case}_000*.nii.gz: modalities of different shapes {shapes}")
    return np.stack([v for v, _ in volumes]), volumes[0][1]


def nonzero_bbox(data: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """nnU-Net's crop mask (non-zero in any modality, holes filled) and its bounding box."""
    from scipy.ndimage import binary_fill_holes

    mask = np.asarray(binary_fill_holes(np.any(data != 0, axis=0)))
    if not mask.any():
        raise HarnessError("BraTS case with every voxel zero: nothing to crop to")
    bbox = []
    for axis in range(3):
        where = np.nonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))[0]
        bbox.append([int(where[0]), int(where[-1]) + 1])
    return mask, bbox


def preprocess_volume(
    data: np.ndarray, spacing: np.ndarray, shape: Sequence[int] = PADDED_SHAPE, name: str = "case"
) -> tuple[np.ndarray, dict[str, Any]]:
    """(4, z, y, x) raw modalities -> (4, *shape) float32 and the facts scoring needs."""
    if not np.allclose(spacing, TARGET_SPACING, atol=1e-3):
        # nnU-Net would resample (third-order spline) first; BraTS 2019 is all 1 mm.
        raise HarnessError(f"{name}: voxel spacing {spacing.tolist()} mm; BraTS volumes are 1 mm isotropic")
    mask, bbox = nonzero_bbox(data)
    box = tuple(slice(lo, hi) for lo, hi in bbox)
    cropped = data[(slice(None), *box)].astype(np.float64)
    cropped[np.isnan(cropped)] = 0
    inside = mask[box]
    for c in range(len(cropped)):
        values = cropped[c][inside]
        cropped[c][inside] = (values - values.mean()) / (values.std() + 1e-8)
        cropped[c][~inside] = 0
    size = cropped.shape[1:]
    if any(s > p for s, p in zip(size, shape, strict=True)):
        raise HarnessError(f"{name}: brain bounding box {size} exceeds the model's input {tuple(shape)}")
    pad = [(p - s) // 2 for s, p in zip(size, shape, strict=True)]
    out = np.zeros((len(cropped), *shape), dtype=np.float32)
    out[(slice(None), *(slice(b, b + s) for b, s in zip(pad, size, strict=True)))] = cropped
    facts = {"crop_bbox": bbox, "size_after_cropping": list(size), "original_size_of_raw_data": list(data.shape[1:])}
    return out, facts


def is_synthetic(dataset_dir: Path) -> bool:
    meta = dataset_dir / "dataset.json"
    return meta.is_file() and bool(json.loads(meta.read_text()).get("synthetic"))


def case_list(dataset_dir: Path) -> list[str]:
    """Validation fold 1 in the reference's order, or a synthetic set's own list."""
    if is_synthetic(dataset_dir):
        return [str(c) for c in json.loads((dataset_dir / "dataset.json").read_text())["validation"]]
    missing = [c for c in FOLD1_CASES if not (dataset_dir / "imagesTr" / f"{c}_0000.nii.gz").is_file()]
    if missing:
        raise HarnessError(
            f"{dataset_dir / 'imagesTr' / missing[0]}_0000.nii.gz: missing BraTS case ({len(missing)} of the "
            f"{DATASET_SIZE} fold-1 cases absent); the dataset directory is nnU-Net's Task043_BraTS2019"
        )
    return list(FOLD1_CASES)


def preprocess(
    dataset_dir: Path, reference_dir: Path | None = None, shape: Sequence[int] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Samples ``{"input": (4, 224, 224, 160) float32}`` in QSL order. With ``reference_dir``,
    ``cases.json`` (what scoring needs) is written there once the last case is done, and the
    reference's ``preprocessed_files.pkl`` and ``<case>.pkl`` ([volume, properties]) beside it,
    which accuracy-brats.py reads, with each case's ground truth in ``labelsTr/`` (its
    ``--label_data_dir``), so scoring needs nothing outside ``reference_dir``."""
    if shape is None:
        meta = dataset_dir / "dataset.json"
        shape = json.loads(meta.read_text()).get("padded_shape", PADDED_SHAPE) if is_synthetic(dataset_dir) else None
    shape = tuple(shape or PADDED_SHAPE)
    cases = case_list(dataset_dir)
    facts: dict[str, Any] = {}
    for case in cases:
        data, spacing = load_case(dataset_dir, case)
        volume, facts[case] = preprocess_volume(data, spacing, shape, name=str(dataset_dir / "imagesTr" / case))
        if reference_dir is not None:
            props = dict(facts[case], itk_spacing=tuple(spacing[::-1].tolist()), itk_origin=(0.0, 0.0, 0.0))
            props["itk_direction"] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
            atomic_write_bytes(reference_dir / f"{case}.pkl", pickle.dumps([volume, props]))
            label = dataset_dir / LABELS_DIR / f"{case}.nii.gz"
            if not label.is_file():
                raise HarnessError(f"{label}: missing ground truth (BraTS in nnU-Net's Task043 layout: labelsTr/)")
            atomic_write_bytes(reference_dir / LABELS_DIR / label.name, label.read_bytes())
        yield {INPUT: volume}
    if reference_dir is not None:
        atomic_write_bytes(reference_dir / "preprocessed_files.pkl", pickle.dumps(cases))
        index = {"file_list": cases, "cases": facts, "shape": list(shape)}
        atomic_write_text(reference_dir / CASES_JSON, json.dumps(index, indent=2))


def collate(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {INPUT: np.ascontiguousarray(np.stack([s[INPUT] for s in samples]), dtype=np.float32)}


def infer(
    run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]], batch: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The whole padded volume in one call; the reference keeps the ``output`` head as float16."""
    return {OUTPUT: np.asarray(run(dict(batch))[OUTPUT]).astype(np.float16)}


def responses(outputs: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
    """(4, D, H, W) float16 per sample of the ``n``, as bytes in C order."""
    out = outputs[OUTPUT]
    if out.shape[0] != n or out.shape[1] != CLASSES:
        raise HarnessError(f"3d-unet BraTS output of shape {out.shape} for {n} samples: expected (N, 4, ...)")
    return [np.ascontiguousarray(o, dtype=np.float16).reshape(-1).view(np.uint8) for o in out]


def segmentation(logits: np.ndarray, facts: Mapping[str, Any]) -> np.ndarray:
    """Padded (4, *shape) output -> label volume of the raw case's size (z, y, x), as nnU-Net's
    ``save_segmentation_nifti_from_softmax`` after accuracy-brats.py strips the padding."""
    size = facts["size_after_cropping"]
    pad = [(p - s) // 2 for s, p in zip(size, logits.shape[1:], strict=True)]
    labels = logits[(slice(None), *(slice(b, b + s) for b, s in zip(pad, size, strict=True)))].argmax(0)
    full = np.zeros(facts["original_size_of_raw_data"], dtype=np.uint8)
    (z0, _), (y0, _), (x0, _) = facts["crop_bbox"]
    full[z0 : z0 + size[0], y0 : y0 + size[1], x0 : x0 + size[2]] = labels
    return full


def region_dice(prediction: np.ndarray, truth: np.ndarray) -> list[float]:
    out = []
    for labels in REGIONS.values():
        p, t = np.isin(prediction, labels), np.isin(truth, labels)
        ps, ts = int(np.count_nonzero(p)), int(np.count_nonzero(t))
        if ps == 0 and ts == 0:
            out.append(float("nan"))
        else:
            out.append(2.0 * np.count_nonzero(p & t) / float(ps + ts))
    return out


def score(accuracy_log: Path, preprocessed_dir: Path, subset: bool = False) -> tuple[dict[str, float], str]:
    """Mean DICE as accuracy-brats.py computes and prints it, from the ``cases.json`` and
    ``labelsTr/`` that ``preprocess`` wrote.

    accuracy-brats.py wants exactly one prediction per case; ``subset`` scores the cases a log
    holds instead (the first response of each), as TEST01's accuracy fallback needs (the same
    figures for a complete log)."""
    from .kits19 import read_accuracy_log

    index_path = preprocessed_dir / CASES_JSON
    if not index_path.is_file():
        raise HarnessError(f"{index_path}: missing (written by preprocessing the BraTS dataset with a reference dir)")
    index = json.loads(index_path.read_text())
    cases, shape = index["file_list"], tuple(index["shape"])
    entries = read_accuracy_log(accuracy_log)
    if len(entries) != len(cases) and not subset:
        raise HarnessError(f"{accuracy_log}: {len(entries)} predictions for {len(cases)} cases; one per case expected")
    per_case: dict[int, list[float]] = {}
    nbytes = 2 * CLASSES * int(np.prod(shape))
    for entry in entries:
        try:
            idx, data = int(str(entry["qsl_idx"])), bytes.fromhex(str(entry["data"]))
        except (KeyError, TypeError, ValueError):
            raise HarnessError(
                f"{accuracy_log}: an entry without a valid qsl_idx and hex data: {str(entry)[:80]}"
            ) from None
        if not 0 <= idx < len(cases) or len(data) != nbytes:
            raise HarnessError(
                f"{accuracy_log}: qsl_idx {idx} holds {len(data)} bytes; expected float16 {(CLASSES, *shape)} "
                f"({nbytes} bytes) for one of {len(cases)} cases"
            )
        if idx in per_case:
            continue
        case = cases[idx]
        prediction = segmentation(np.frombuffer(data, np.float16).reshape(CLASSES, *shape), index["cases"][case])
        label = preprocessed_dir / LABELS_DIR / f"{case}.nii.gz"
        truth, _ = read_volume(label)
        if truth.shape != prediction.shape:
            raise HarnessError(f"{label}: shape {truth.shape}, images {prediction.shape}; preprocess again")
        per_case[idx] = region_dice(prediction, truth.astype(np.uint8))
    if len(per_case) != len(cases) and not subset:
        raise HarnessError(f"{accuracy_log}: repeated qsl_idx, {len(cases) - len(per_case)} cases have no prediction")
    if not per_case:
        raise HarnessError(f"{accuracy_log}: no predictions to score")
    table = np.array([per_case[i] for i in sorted(per_case)])
    # summary.csv holds each region's NaN-mean with 4 decimals; the script reads those back.
    whole, core, enhancing = (float(f"{np.nanmean(table[:, r]):02.4f}") for r in range(3))
    mean = (whole + core + enhancing) / 3
    line = (
        f"Accuracy: mean = {mean:.5f}, whole tumor = {whole:.4f}, tumor core = {core:.4f}, "
        f"enhancing tumor = {enhancing:.4f}"
    )
    return {"mean": mean, "whole tumor": whole, "tumor core": core, "enhancing tumor": enhancing}, line
