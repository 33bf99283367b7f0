"""KiTS19 (the current round's 3d-unet): NIfTI cases, the reference's preprocessing, mean DICE.

A case is ``<dataset>/case_XXXXX/imaging.nii.gz`` (CT, axis 0 = slices) with
``segmentation.nii.gz`` (0 background, 1 kidney, 2 tumour). Preprocessing, as the reference's
preprocess.py: resample to 1.6 x 1.2 x 1.2 mm (linear for the image, nearest for the labels,
scipy's ``zoom`` with ``grid_mode=False``), clip to [-79, 304] HU and normalise with mean 101 and
std 76.9, edge-pad to at least 128 per axis, then crop (remainder modulo 64 below 32) or pad with
-2.2 (labels 0) so that every edge is a multiple of 64. Samples keep their own sizes.

Scoring follows accuracy_kits.py: each response is the uint8 label volume of the preprocessed
case; DICE per class (kidney, tumour) with 1e-6 smoothing on both sides, composite = their mean,
each averaged over the cases; printed as ``Accuracy: mean = 0.86170, kidney = 0.9347, tumor = 0.7887``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.base import TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_bytes, atomic_write_text, temp_path_for

INPUT = "input"
PREDICTION = "prediction"
IMAGING = "imaging.nii.gz"
SEGMENTATION = "segmentation.nii.gz"
DATASET_JSON = "dataset.json"
# The reference's constants (global_vars.py).
MEAN, STD = 101.0, 76.9
CLIP_MIN, CLIP_MAX = -79.0, 304.0
PAD_VALUE = -2.2
TARGET_SPACING = [1.6, 1.2, 1.2]
ROI = 128
OVERLAP = 0.5
# Round values (v6.1): the 43 inference cases; case_00400 is case_00185 duplicated by the reference's Makefile.
INFERENCE_CASES = [
    "case_00000",
    "case_00003",
    "case_00005",
    "case_00006",
    "case_00012",
    "case_00024",
    "case_00034",
    "case_00041",
    "case_00044",
    "case_00049",
    "case_00052",
    "case_00056",
    "case_00061",
    "case_00065",
    "case_00066",
    "case_00070",
    "case_00076",
    "case_00078",
    "case_00080",
    "case_00084",
    "case_00086",
    "case_00087",
    "case_00092",
    "case_00111",
    "case_00112",
    "case_00125",
    "case_00128",
    "case_00138",
    "case_00157",
    "case_00160",
    "case_00161",
    "case_00162",
    "case_00169",
    "case_00171",
    "case_00176",
    "case_00185",
    "case_00187",
    "case_00189",
    "case_00198",
    "case_00203",
    "case_00206",
    "case_00207",
    "case_00400",
]
DUPLICATES = {"case_00400": "case_00185"}
# Each inference case's shape (D, H, W) after the reference's preprocessing (resampled to TARGET_SPACING,
# padded or cropped to multiples of 64): what the SUT walks, 2,761 windows of 128^3 over the 43 cases
# (64.2 a case, 8 to 144). Derived, not published: each case's segmentation.nii.gz of
# github.com/neheller/kits19 (commit 456b293; KiTS19's imaging shares its shape and affine) put through
# preprocess_label below (the reference's steps: resampling to round(size x pixdim / target), then
# pad_to_min_shape and fit_to_stride). tests/harness/test_unet3d_kits_size.py checks the window counts.
PREPROCESSED_SHAPES: dict[str, tuple[int, int, int]] = {
    "case_00000": (192, 384, 384),
    "case_00003": (192, 384, 384),
    "case_00005": (256, 448, 448),
    "case_00006": (320, 320, 320),
    "case_00012": (256, 320, 320),
    "case_00024": (256, 256, 256),
    "case_00034": (320, 384, 384),
    "case_00041": (128, 320, 320),
    "case_00044": (320, 384, 384),
    "case_00049": (192, 384, 384),
    "case_00052": (192, 384, 384),
    "case_00056": (256, 320, 320),
    "case_00061": (128, 448, 448),
    "case_00065": (192, 320, 320),
    "case_00066": (320, 384, 384),
    "case_00070": (192, 320, 320),
    "case_00076": (192, 320, 320),
    "case_00078": (192, 384, 384),
    "case_00080": (256, 320, 320),
    "case_00084": (320, 448, 448),
    "case_00086": (320, 320, 320),
    "case_00087": (128, 320, 320),
    "case_00092": (320, 320, 320),
    "case_00111": (320, 320, 320),
    "case_00112": (128, 320, 320),
    "case_00125": (320, 448, 448),
    "case_00128": (320, 384, 384),
    "case_00138": (128, 320, 320),
    "case_00157": (192, 384, 384),
    "case_00160": (128, 192, 320),
    "case_00161": (192, 384, 384),
    "case_00162": (320, 256, 256),
    "case_00169": (320, 320, 320),
    "case_00171": (384, 320, 320),
    "case_00176": (320, 448, 448),
    "case_00185": (384, 384, 384),
    "case_00187": (256, 256, 256),
    "case_00189": (448, 320, 320),
    "case_00198": (448, 320, 320),
    "case_00203": (384, 256, 256),
    "case_00206": (192, 384, 384),
    "case_00207": (448, 320, 320),
    "case_00400": (384, 384, 384),
}
DATASET_SIZE = 43
PERFORMANCE_SAMPLE_COUNT = 43
SCENARIOS = ("Offline", "SingleStream")
REFERENCE_DICE = 0.86170  # FP32 mean (composite); targets are 99 % and 99.9 % of it
SAMPLE_SPEC = TensorSpec(INPUT, (1, None, None, None), "float32")
RESPONSE_SPEC = TensorSpec(PREDICTION, (None,), "uint8")
# The reference's preprocessed-data layout, which accuracy_kits.py reads.
PREPROCESSED_FILES = "preprocessed_files.pkl"
CASES_JSON = "cases.json"  # the same facts for this project's own reader (no pickle)


@dataclass
class Case:
    """One preprocessed case: ``image`` (1, D, H, W) float32, ``label`` (1, D, H, W) uint8."""

    name: str
    image: np.ndarray
    label: np.ndarray | None
    aux: dict[str, object] = field(default_factory=dict)


def read_nifti(path: Path, dtype: type[np.generic]) -> tuple[np.ndarray, list[float], np.ndarray]:
    """Data (``get_fdata`` cast to ``dtype``, as the reference), pixdim[1:4] and affine."""
    import nibabel

    if not path.is_file():
        raise HarnessError(f"{path}: missing file (each KiTS19 case needs {IMAGING} and {SEGMENTATION})")
    try:
        img: Any = nibabel.load(path)
        data = np.asarray(img.get_fdata().astype(dtype))
        spacing = [float(s) for s in img.header["pixdim"][1:4].tolist()]
        affine = np.asarray(img.affine)
    except Exception as exc:  # nibabel, gzip and zlib each raise their own kind
        raise HarnessError(f"{path}: not a readable NIfTI volume ({exc}); download the case again") from None
    if data.ndim != 3:
        raise HarnessError(f"{path}: a {data.ndim}-D volume; KiTS19 volumes are 3-D")
    return data, spacing, affine


def reshaped_affine(affine: np.ndarray) -> np.ndarray:
    """The affine of the resampled volume: each axis' non-zero entry becomes the target spacing."""
    out = affine.copy()
    target = np.array(TARGET_SPACING)
    for i in range(3):
        idx = np.where(affine[i][:-1] != 0)
        sign = -1 if affine[i][idx] < 0 else 1
        out[i][idx] = target[idx] * sign
    return out


def resample(volume: np.ndarray, spacing: list[float], order: int) -> np.ndarray:
    from scipy.ndimage import zoom

    # The reference compares the header's float32 spacings with the targets, so this is (almost) always true.
    if spacing == TARGET_SPACING:
        return volume
    factor = np.array(spacing) / np.array(TARGET_SPACING)
    if all(round(s * f) == s for s, f in zip(volume.shape, factor, strict=True)):
        # zoom's output shape unchanged: its grid maps every voxel onto itself and orders 0 and 1 have
        # no prefilter, so it would return the volume as is (seconds a case at the target spacing).
        return volume
    return np.asarray(zoom(volume, factor, order=order, mode="constant", cval=volume.min(), grid_mode=False))


def normalize(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, CLIP_MIN, CLIP_MAX) - MEAN) / STD


def pad_to_min_shape(volume: np.ndarray, roi: int = ROI) -> np.ndarray:
    """Edge-pad (1, D, H, W) so that every edge is at least ``roi``, split evenly (extra at the end)."""
    short = [max(0, roi - s) for s in volume.shape[1:]]
    return np.pad(volume, [(0, 0)] + [(b // 2, b - b // 2) for b in short], mode="edge")


def fit_to_stride(volume: np.ndarray, pad_value: float, roi: int = ROI) -> np.ndarray:
    """Crop an edge whose remainder modulo the stride (half the patch) is below half a stride,
    then pad the rest with ``pad_value`` up to a multiple of the stride (at least ``roi``), both
    split evenly."""
    stride = int(roi * (1 - OVERLAP))
    shape = volume.shape[1:]
    crop = [s % stride if s % stride < stride // 2 else 0 for s in shape]
    volume = volume[
        :,
        crop[0] // 2 : shape[0] - (crop[0] - crop[0] // 2),
        crop[1] // 2 : shape[1] - (crop[1] - crop[1] // 2),
        crop[2] // 2 : shape[2] - (crop[2] - crop[2] // 2),
    ]
    pad = [(stride - s % stride) % stride for s in volume.shape[1:]]
    pad = [p if s + p >= roi else p + stride for s, p in zip(volume.shape[1:], pad, strict=True)]
    return np.pad(volume, [(0, 0)] + [(p // 2, p - p // 2) for p in pad], mode="constant", constant_values=pad_value)


def preprocess_case(case_dir: Path, with_label: bool = True, name: str | None = None, roi: int = ROI) -> Case:
    """The reference's ``preprocess_case`` for one case directory. ``roi`` is the patch the
    padding serves: the reference's 128, or the small synthetic model's patch."""
    image, spacing, affine = read_nifti(case_dir / IMAGING, np.float32)
    raw_shape = image.shape
    image = normalize(resample(image, spacing, order=1))[np.newaxis]
    image = fit_to_stride(pad_to_min_shape(image, roi), PAD_VALUE, roi).astype(np.float32)
    label = None
    if with_label:
        raw, _, _ = read_nifti(case_dir / SEGMENTATION, np.uint8)
        if raw.shape != raw_shape:
            raise HarnessError(f"{case_dir / SEGMENTATION}: shape {raw.shape} differs from {IMAGING}'s")
        label = preprocess_label(raw, spacing, roi)
    aux: dict[str, object] = {
        "original_affine": affine,
        "reshaped_affine": reshaped_affine(affine),
        "zoom_factor": np.array(spacing) / np.array(TARGET_SPACING),
        "case": name or case_dir.name,
        "image_shape": image.shape,
    }
    return Case(name or case_dir.name, image, label, aux)


def preprocess_label(raw: np.ndarray, spacing: list[float], roi: int = ROI) -> np.ndarray:
    """A raw segmentation (D, H, W) as the reference preprocesses it: (1, D', H', W') uint8, nearest
    resampling, padded with background."""
    label = resample(raw, spacing, order=0)[np.newaxis]
    return fit_to_stride(pad_to_min_shape(label, roi), 0, roi).astype(np.uint8)


def is_synthetic(dataset_dir: Path) -> bool:
    meta = dataset_dir / DATASET_JSON
    return meta.is_file() and bool(json.loads(meta.read_text()).get("synthetic"))


def dataset_roi(dataset_dir: Path) -> int:
    """The patch a dataset is preprocessed for: 128, or what a synthetic set was made for."""
    if is_synthetic(dataset_dir):
        return int(json.loads((dataset_dir / DATASET_JSON).read_text()).get("patch", ROI))
    return ROI


def case_list(dataset_dir: Path) -> list[str]:
    """The cases in QSL order: the reference's 43 inference cases, or a synthetic set's own list."""
    if is_synthetic(dataset_dir):
        return [str(c) for c in json.loads((dataset_dir / DATASET_JSON).read_text())["cases"]]
    missing = [c for c in INFERENCE_CASES if not _case_dir(dataset_dir, c).is_dir()]
    if missing:
        raise HarnessError(
            f"{dataset_dir / missing[0]}: missing KiTS19 case ({len(missing)} of the {DATASET_SIZE} inference "
            "cases absent); the dataset directory is kits19/data with case_XXXXX/ folders"
        )
    return list(INFERENCE_CASES)


def _case_dir(dataset_dir: Path, case: str) -> Path:
    path = dataset_dir / case
    if not path.is_dir() and case in DUPLICATES:
        return dataset_dir / DUPLICATES[case]
    return path


def preprocess_cases(dataset_dir: Path, with_label: bool = True) -> Iterator[Case]:
    roi = dataset_roi(dataset_dir)
    for case in case_list(dataset_dir):
        yield preprocess_case(_case_dir(dataset_dir, case), with_label, name=case, roi=roi)


def preprocess(dataset_dir: Path, reference_dir: Path | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Samples ``{"input": (1, D, H, W) float32}`` in QSL order. With ``reference_dir``, the
    ground truth is written there in the reference's preprocessed layout as the cases go (the
    index files when the last case is done), for ``score`` and for accuracy_kits.py."""
    done: list[Case] = []
    for case in preprocess_cases(dataset_dir, with_label=reference_dir is not None):
        if reference_dir is not None:
            write_ground_truth(reference_dir, case)
            done.append(Case(case.name, np.empty(0), None, case.aux))
        yield {INPUT: case.image}
    if reference_dir is not None:
        write_index(reference_dir, done, synthetic=is_synthetic(dataset_dir))


def write_ground_truth(reference_dir: Path, case: Case) -> None:
    """``nifti/<case>/segmentation.nii.gz``: the preprocessed labels with the resampled affine."""
    import nibabel

    assert case.label is not None
    target = reference_dir / "nifti" / case.name / SEGMENTATION
    target.parent.mkdir(parents=True, exist_ok=True)
    with temp_path_for(target) as tmp:
        # nibabel picks the format from the name: the temp file must end in .nii.gz too.
        gz = tmp.with_name(tmp.name + ".nii.gz")
        nibabel.save(nibabel.Nifti1Image(case.label[0], affine=case.aux["reshaped_affine"]), gz)
        gz.replace(tmp)


def write_index(reference_dir: Path, cases: Sequence[Case], synthetic: bool) -> None:
    """``preprocessed_files.pkl`` as the reference writes it (accuracy_kits.py reads it) and
    ``cases.json`` with the same facts for ``score``."""
    names = [c.name for c in cases]
    index = {"file_list": names, "cases": {c.name: c.aux for c in cases}}
    atomic_write_bytes(reference_dir / PREPROCESSED_FILES, pickle.dumps(index))
    facts = {
        "file_list": names,
        "image_shape": {c.name: list(c.aux["image_shape"]) for c in cases},  # type: ignore[call-overload]
        "synthetic": synthetic,
    }
    atomic_write_text(reference_dir / CASES_JSON, json.dumps(facts, indent=2))


# --- scoring --------------------------------------------------------------------------------------


def dice(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """accuracy_kits.py's DICE for kidney (1) and tumour (2): (2|P∩T| + 1e-6) / (|P| + |T| + 1e-6).
    Counting voxels gives the same float64 sums as its one-hot products."""
    out = []
    for cls in (1, 2):
        p, t = prediction == cls, target == cls
        inter, ps, ts = float(np.count_nonzero(p & t)), float(np.count_nonzero(p)), float(np.count_nonzero(t))
        out.append((2.0 * inter + 1e-6) / (ts + ps + 1e-6))
    return out[0], out[1]


def ground_truth(data_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(case, preprocessed label (D, H, W) uint8) in QSL order, from the reference layout
    (``cases.json`` and ``nifti/``), or else by preprocessing the raw dataset's labels."""
    index = data_dir / CASES_JSON
    if not index.is_file():
        for case in preprocess_cases(data_dir):
            assert case.label is not None
            yield case.name, case.label[0]
        return
    for name in json.loads(index.read_text())["file_list"]:
        label, _, _ = read_nifti(data_dir / "nifti" / name / SEGMENTATION, np.uint8)
        yield name, label


def read_accuracy_log(path: Path) -> list[dict[str, object]]:
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing accuracy log") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); rerun the accuracy test"
        ) from None
    if not isinstance(entries, list):
        raise HarnessError(f"{path}: not a LoadGen accuracy log (a JSON list of {{seq_id, qsl_idx, data}})")
    return entries


def score(accuracy_log: Path, data_dir: Path, subset: bool = False) -> tuple[dict[str, float], str]:
    """Mean DICE as accuracy_kits.py computes and prints it; ``data_dir`` is the reference layout
    ``preprocess`` wrote (or the raw dataset, whose labels are then preprocessed again).

    accuracy_kits.py wants exactly one prediction per case; ``subset`` scores the cases a log
    holds instead (the first response of each), as TEST01's accuracy fallback needs (the same
    figures for a complete log)."""
    truth = list(ground_truth(data_dir))
    entries = read_accuracy_log(accuracy_log)
    if len(entries) != len(truth) and not subset:
        raise HarnessError(
            f"{accuracy_log}: {len(entries)} predictions for {len(truth)} cases; accuracy_kits.py wants exactly one "
            "per case (an accuracy-mode log of the whole dataset)"
        )
    predictions: dict[int, np.ndarray] = {}
    for entry in entries:
        try:
            idx, data = int(entry["qsl_idx"]), bytes.fromhex(str(entry["data"]))  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError):
            raise HarnessError(
                f"{accuracy_log}: an entry without a valid qsl_idx and hex data: {str(entry)[:80]}"
            ) from None
        if not 0 <= idx < len(truth):
            raise HarnessError(f"{accuracy_log}: qsl_idx {idx} outside the {len(truth)} cases")
        if idx in predictions:
            continue
        shape = truth[idx][1].shape
        if len(data) != int(np.prod(shape)):
            raise HarnessError(
                f"{accuracy_log}: qsl_idx {idx} ({truth[idx][0]}) holds {len(data)} bytes, expected "
                f"{int(np.prod(shape))} (a uint8 label volume of shape {shape})"
            )
        predictions[idx] = np.frombuffer(data, np.uint8).reshape(shape)
    if len(predictions) != len(truth) and not subset:
        raise HarnessError(
            f"{accuracy_log}: repeated qsl_idx, {len(truth) - len(predictions)} cases have no prediction"
        )
    if not predictions:
        raise HarnessError(f"{accuracy_log}: no predictions to score")
    scores = np.array([dice(predictions[i], truth[i][1]) for i in sorted(predictions)])
    kidney, tumor = (float(v) for v in np.nan_to_num(scores).mean(axis=0))
    composite = float(np.nan_to_num(scores.mean(axis=1)).mean())
    line = f"Accuracy: mean = {composite:.5f}, kidney = {kidney:.4f}, tumor = {tumor:.4f}"
    return {"mean": composite, "kidney": kidney, "tumor": tumor}, line
