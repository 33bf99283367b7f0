"""A SYNTHETIC KiTS19: CT-like volumes in the real layout, labelled by the FP32 synthetic model.

``<out>/case_XXXXX/imaging.nii.gz`` (int16 HU, KiTS19's axis order and affine style: axis 0 is
the slices, every axis flipped) and ``segmentation.nii.gz`` (uint8), plus ``dataset.json`` and
``README.md`` saying SYNTHETIC. Each case's spacing and size are chosen so that the reference's
preprocessing can be inverted exactly for the labels: an axis either has the target spacing or
half of it (an odd length 2m - 1, so resampling takes every other voxel), and its length leaves a
remainder below 32 modulo 64 (cropped, never padded). The segmentation is then the model's own
prediction on the preprocessed image, placed back in the raw grid, and preprocessing it gives
that prediction again (checked for every case), so FP32 scores mean DICE 1.0.

Two sizes (``dataset.synthetic.size``). small (CI): each edge one or one and a half patches.
full: KiTS19's own sizes, so that cases/s compares with published 3d-unet figures (a case's cost
is its number of windows): the cases have the preprocessed shapes of the reference's inference
cases (``kits19.PREPROCESSED_SHAPES``: 8 to 144 windows, 64.2 on average over the 43), scaled to
the model's patch (the same windows at 32^3 as at 128^3), at the target spacing (the raw volume is
the preprocessed one; KiTS19's raw CTs are larger and finer, which only preprocessing sees).
At 128^3 a case is 31-257 MB of float32 (5.7 GB for the 43) and costs 8-144 model calls to label,
about 1.07 TFLOP each with the full model (2.95 PFLOP for the 43). On this project's 2-core CPU,
onnxruntime took 18 s a window (about 14 hours for the 43); an H200 in fp32 should take minutes
(estimated, not measured). So full cases are labelled by the harness's pytorch backend in fp32
(TF32 off) where torch sees a GPU, its sliding window on the device (``device_window``), else by
onnxruntime on the CPU (download-data's Job in a cluster has no GPU: hours). The rest (CT, gzip,
the read-back, the sliding-window sums) took 24 s for the largest case on that CPU, peak RSS 1.9 GB,
one case in memory at a time (with a GPU labeller, one a thread: ``CASE_THREADS``): about 9
minutes for the 43 (scaled by voxels). On this project's later CPU (2026-12-05) a 256x448x448 case
took 21.4 s, 15.0 s of it the host's sliding window (the patches, the weighted sums, the norm map,
the argmax; cProfile, an all-background model), which a GPU labeller now does on the device.
The pytorch labeller ran on an H100 (2026-12-05): 16 full-size cases made in 165 s, 4 threads.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from ...errors import HarnessError
from ...fsutil import atomic_write_text, temp_path_for
from ...spec import ModelSize
from . import kits19
from .model import OUTPUT
from .sliding_window import Segment, importance_sum, infer, segmenter, window_origins

CASE_THREADS = 4  # cases made at once with a GPU labeller
Plan = tuple[list[int], list[int], list[bool]]  # (preprocessed shape, crop per axis, half-spacing per axis)


def synthetic_ct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth CT-like volume in HU (int16): air outside an ellipsoid body, soft tissue with
    brighter and darker smooth structures inside."""
    from scipy.ndimage import zoom

    coarse = rng.standard_normal(tuple(max(2, s // 8) for s in shape))
    field = zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)[
        tuple(slice(0, s) for s in shape)
    ]
    # Open grids and in-place steps: a 320x448x448 case peaks near 1.5 GB (dense grids, twice that).
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    body = sum(g**2 for g in grids) < 0.9
    hu = np.multiply(field, 140.0, out=field)
    hu += 60.0
    hu[~body] = -1000.0
    return np.clip(hu, -1024, 3000, out=hu).astype(np.int16)


def calibration_patches(seed: int, patch: int, n: int = 2) -> np.ndarray:
    """Preprocessed (normalised) synthetic CT patches (n, 1, P, P, P) for the model's output bias."""
    rng = np.random.default_rng([seed, 0xCA1])
    vol = kits19.normalize(synthetic_ct(rng, (patch * 2, patch * 2, patch * 2)).astype(np.float32))
    corners = [(0, 0, 0), (patch // 2, patch // 2, patch // 2), (patch, patch, patch)][:n]
    return np.stack([vol[np.newaxis, i : i + patch, j : j + patch, k : k + patch] for i, j, k in corners]).astype(
        np.float32
    )


def case_plan(seed: int, index: int, roi: int) -> Plan:
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


def case_windows(case: str) -> int:
    """The 128^3 windows the reference's sliding window walks over a real inference case."""
    return len(window_origins(kits19.PREPROCESSED_SHAPES[case], kits19.ROI))


def kits19_cases(n: int) -> list[str]:
    """``n`` of the 43 inference cases whose windows per case spread as the whole set's: the cases
    sorted by windows, one from the middle of each of ``n`` equal strata (all 43 for n = 43); in the
    reference's order."""
    if not 1 <= n <= kits19.DATASET_SIZE:
        raise HarnessError(
            f"dataset.synthetic.samples {n}: 3d-unet's full-size synthetic cases mirror KiTS19's "
            f"{kits19.DATASET_SIZE} inference cases; set samples to {kits19.DATASET_SIZE} (or fewer)"
        )
    cases = kits19.INFERENCE_CASES
    by_windows = sorted(cases, key=case_windows)  # stable: ties keep the reference's order
    picked = {by_windows[(2 * k + 1) * len(cases) // (2 * n)] for k in range(n)}
    return [c for c in cases if c in picked]


def kits19_plan(case: str, roi: int) -> Plan:
    """A full-size case: the real case's preprocessed shape scaled to the patch (every edge is a
    multiple of 64, so the windows stay the same), at the target spacing, nothing to crop."""
    if roi % 2:
        raise HarnessError(f"3d-unet model patch {roi}: full-size synthetic cases need an even patch")
    return [s * roi // kits19.ROI for s in kits19.PREPROCESSED_SHAPES[case]], [0, 0, 0], [False, False, False]


def gpu_labeller() -> str | None:
    """``pytorch`` where torch sees a GPU (the harness's backend, fp32: TF32 off), else None
    (onnxruntime on the CPU)."""
    try:
        import torch
    except ImportError:
        return None
    return "pytorch" if torch.cuda.is_available() else None


@contextmanager
def fp32_model(model_path: Path, backend: str | None, batch_size: int) -> Iterator[tuple[Segment, str]]:
    """How the FP32 model the labels come from segments a case, and what runs it: onnxruntime on
    the CPU, or the harness's ``backend`` in fp32 (on a GPU, the sliding window there too)."""
    if backend is None:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {OUTPUT: np.asarray(sess.run([OUTPUT], feed)[0])}

        yield functools.partial(infer, run), "onnxruntime CPU fp32"
        return
    from ...backends import get_backend

    model = get_backend(backend)
    model.load(model_path, batch_size, "fp32", outputs=[OUTPUT])
    try:
        yield segmenter(model), f"{backend} {model.device()} fp32"
    finally:
        model.close()


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


def _write_case(
    case_dir: Path, seed: int, index: int, plan: Plan, segment: Segment, patch: int, batch_size: int
) -> None:
    """One case's imaging and labels (its arrays freed on return: one case in memory a thread)."""
    shape, crop, half = plan
    spacing = [t / 2 if h else t for t, h in zip(kits19.TARGET_SPACING, half, strict=True)]
    raw_shape = tuple(2 * (s + c) - 1 if h else s + c for s, c, h in zip(shape, crop, half, strict=True))
    affine = kits_affine(spacing)
    _save(synthetic_ct(np.random.default_rng([seed, index, 1]), raw_shape), affine, case_dir / kits19.IMAGING)
    image = kits19.preprocess_case(case_dir, with_label=False, roi=patch).image  # what preprocess reads back
    prediction = segment({kits19.INPUT: image}, patch, batch_size)[kits19.PREDICTION]
    del image
    _save(raw_label(prediction, shape, crop, half), affine, case_dir / kits19.SEGMENTATION)
    raw, read_spacing, _ = kits19.read_nifti(case_dir / kits19.SEGMENTATION, np.uint8)
    if not np.array_equal(kits19.preprocess_label(raw, read_spacing, patch)[0], prediction):
        raise HarnessError(f"{case_dir}: the synthetic labels do not survive preprocessing (a bug in synthetic.py)")


def _progress() -> Progress:
    """Cases made, counted in windows (a case's labelling cost), where stderr is a terminal."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not sys.stderr.isatty(),
        transient=True,
    )


def synthesize_dataset(
    out_dir: Path,
    seed: int,
    n: int,
    model_path: Path,
    patch: int | None = None,
    batch_size: int = 4,
    size: ModelSize = "small",
    labeller: str | None = None,
) -> dict[str, object]:
    """Write ``n`` SYNTHETIC cases of ``size`` into ``out_dir`` labelled by the FP32 model at
    ``model_path``, run by onnxruntime on the CPU or by the harness's backend ``labeller``."""
    from .model import patch_size

    patch = patch or patch_size(model_path)
    mirrored = kits19_cases(n) if size == "full" else []
    plans = [kits19_plan(c, patch) for c in mirrored] or [case_plan(seed, i, patch) for i in range(n)]
    cases = [f"case_{i:05d}" for i in range(n)]
    windows = [len(window_origins(plan[0], patch)) for plan in plans]
    with fp32_model(model_path, labeller, batch_size) as (segment, labelled_by), _progress() as bar:
        if mirrored and labeller is None and patch == kits19.ROI:  # the full model: hours, say so first
            print(
                f"3d-unet: labelling {n} full-size SYNTHETIC cases ({sum(windows):,} windows) with the full model on "
                f"the CPU (onnxruntime): about 18 s a window on 2 cores, about {sum(windows) * 18 / 3600:.0f} h. "
                "Run download-data where torch sees a GPU for minutes instead.",
                file=sys.stderr,
                flush=True,
            )
        task = bar.add_task(f"SYNTHETIC KiTS19 cases, labelled by {labelled_by}", total=sum(windows))

        def make(i: int) -> None:
            _write_case(out_dir / cases[i], seed, i, plans[i], segment, patch, batch_size)
            bar.advance(task, windows[i])

        # With a GPU labeller the host's part of a case (CT, gzip, read-backs: about 6 s of a full-size
        # case's here) is most of it: cases in threads (numpy, scipy and zlib let go of the GIL; about
        # 2 GB a thread at the largest). onnxruntime's labelling takes every core itself: one at a time.
        threads = min(CASE_THREADS, len(os.sched_getaffinity(0))) if labeller else 1
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(make, range(n)))  # each case seeded by its index: the same set in any order
    importance_sum.cache_clear()  # full-size norm maps are up to 257 MB each
    facts: dict[str, object] = {
        "synthetic": True,
        "seed": seed,
        "cases": cases,
        "model": model_path.name,
        "patch": patch,
        "size": size,
        "labelledBy": labelled_by,
    }
    if mirrored:
        facts["shapesOf"] = mirrored  # the real inference case each one has the preprocessed shape of
    atomic_write_text(out_dir / kits19.DATASET_JSON, json.dumps(facts, indent=2))
    sizes = f"the preprocessed shapes of KiTS19 inference cases ({', '.join(mirrored)})" if mirrored else "small"
    atomic_write_text(
        out_dir / "README.md",
        f"SYNTHETIC KiTS19 ({n} cases, seed {seed}, {sizes}): generated CT-like volumes, segmentations are the "
        f"random-weight synthetic 3D U-Net's own predictions ({model_path.name}, {labelled_by}). Not patient data.\n",
    )
    return facts
