"""Sliding-window inference as the KiTS19 reference does it (inference_utils.py, base_SUT.py).

Cubic patches with 50 % overlap walk the whole preprocessed volume (whose edges the
preprocessing made multiples of half a patch); each patch's logits are weighted by a Gaussian
importance map (std = patch / 8, cube-rooted, peak 1) and summed, the sum is divided by the summed
weights and the argmax over the 3 classes is the label volume. The response is that volume's
uint8 bytes. Patches go to the model in batches; the sums are taken in the reference's window
order, so the result is the same for any batch size.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ...backends.base import Backend
from ...errors import HarnessError
from .kits19 import INPUT, OVERLAP, PREDICTION, ROI
from .model import OUTPUT

Run = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
# One sample, the patch and the patches per model call -> {"prediction": labels}.
Segment = Callable[[Mapping[str, np.ndarray], int, int], dict[str, np.ndarray]]


def segmenter(backend: Backend) -> Segment:
    """How a case is segmented with ``backend``: on its GPU (``device_window``) where it is the
    pytorch backend on one, unless MLPERF_UNET_DEVICE_WINDOW=0 (to compare), else on the host with
    the backend's ``predict``."""
    place = backend.tensor_device()
    if place is not None and place[0].type == "cuda" and os.environ.get("MLPERF_UNET_DEVICE_WINDOW", "1") != "0":
        from .device_window import infer as on_device

        return functools.partial(on_device, backend)
    return functools.partial(infer, backend.predict)


@functools.cache
def gaussian_importance(patch: int) -> np.ndarray:
    """The reference's ``gaussian_kernel(patch, 0.125 * patch)`` as float32 (patch, patch, patch),
    made once per patch size (read-only)."""
    from scipy.signal import windows

    g = windows.gaussian(patch, 0.125 * patch)
    cube = np.cbrt((g[:, None] * g[None, :])[:, :, None] * g[None, None, :])
    out = (cube / cube.max()).astype(np.float32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=8)
def importance_sum(shape: tuple[int, ...], patch: int) -> np.ndarray:
    """The summed importance of every window over a volume of ``shape`` (the reference's norm map),
    made once per shape: a performance run sends the same cases again and again (read-only)."""
    weight = gaussian_importance(patch)
    norm = np.zeros(shape, dtype=np.float32)
    for i, j, k in window_origins(shape, patch):
        norm[i : i + patch, j : j + patch, k : k + patch] += weight
    norm.flags.writeable = False
    return norm


def volume_shape(image: np.ndarray) -> tuple[int, ...]:
    """A sample's (D, H, W), from its input (1, D, H, W)."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise HarnessError(f"3d-unet sample input of shape {image.shape}: expected (1, D, H, W)")
    return tuple(image.shape[1:])


def check_logits(shape: Sequence[int], patches: int, patch: int) -> None:
    """The model's output for ``patches`` patches is (patches, 3, P, P, P)."""
    want = (patches, 3, patch, patch, patch)
    if tuple(shape) != want:
        raise HarnessError(f"3d-unet model output {OUTPUT!r} of shape {tuple(shape)}: expected {want}")


def window_origins(shape: Sequence[int], patch: int, overlap: float = OVERLAP) -> list[tuple[int, int, int]]:
    """Patch corners in the reference's order (z outermost); edges must fit whole strides."""
    stride = int(patch * (1 - overlap))
    if len(shape) != 3 or any(s < patch for s in shape):
        raise HarnessError(f"3d-unet sample of shape {tuple(shape)}: each edge must be at least the patch ({patch})")
    counts = [(s - patch) // stride + 1 for s in shape]
    return [
        (i, j, k)
        for i in range(0, stride * counts[0], stride)
        for j in range(0, stride * counts[1], stride)
        for k in range(0, stride * counts[2], stride)
    ]


def collate(patches: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Patches (1, P, P, P) -> the model's batch ``{"input": (B, 1, P, P, P)}``."""
    return {INPUT: np.ascontiguousarray(np.stack(patches), dtype=np.float32)}


def infer(run: Run, sample: Mapping[str, np.ndarray], patch: int = ROI, batch_size: int = 1) -> dict[str, np.ndarray]:
    """One sample ``{"input": (1, D, H, W)}`` -> ``{"prediction": (D, H, W) uint8}``."""
    image = sample[INPUT]
    shape = volume_shape(image)
    origins = window_origins(shape, patch)
    weight = gaussian_importance(patch)
    result = np.zeros((3, *shape), dtype=np.float32)
    weighted = np.empty((3, patch, patch, patch), dtype=np.float32)  # one patch's weighted logits, reused
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        views = [(slice(i, i + patch), slice(j, j + patch), slice(k, k + patch)) for i, j, k in chunk]
        logits = np.asarray(run(collate([image[(slice(None), *v)] for v in views]))[OUTPUT], dtype=np.float32)
        check_logits(logits.shape, len(chunk), patch)
        for out, view in zip(logits, views, strict=True):
            result[(slice(None), *view)] += np.multiply(out, weight, out=weighted)
    # The reference keeps one norm map per class; the three are equal, so one is enough.
    result /= importance_sum(tuple(shape), patch)
    return {PREDICTION: class_argmax(result)}


def class_argmax(scores: np.ndarray) -> np.ndarray:
    """``np.argmax(scores, axis=0)`` as uint8 for (3, D, H, W) class scores, the first class on ties:
    two comparisons over whole volumes instead of numpy's strided argmax along the class axis, which
    took 0.36 s of a 192^3 case's 0.39 s of host work (on this project's CPU)."""
    background, kidney, tumour = scores
    labels = (kidney > background).astype(np.uint8)
    labels[tumour > np.maximum(background, kidney)] = 2
    return labels


def responses(
    outputs: Sequence[Mapping[str, np.ndarray]], samples: Sequence[Mapping[str, np.ndarray]]
) -> list[np.ndarray]:
    """What the reference logs per sample: the label volume's bytes (D*H*W uint8, C order)."""
    out = []
    for o, s in zip(outputs, samples, strict=True):
        pred = o[PREDICTION]
        if pred.shape != s[INPUT].shape[1:]:
            raise HarnessError(f"3d-unet prediction of shape {pred.shape} for a sample of shape {s[INPUT].shape[1:]}")
        out.append(np.ascontiguousarray(pred, dtype=np.uint8).reshape(-1))
    return out
