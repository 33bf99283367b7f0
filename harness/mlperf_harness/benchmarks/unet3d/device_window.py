"""``sliding_window.infer`` on the device: the pytorch backend's model on a GPU.

On an H200 (2026-12-04, 20:31) 3d-unet's harness kept the GPU 8 % busy: the host cut each case into
patches, copied each over, took 3 x 128^3 float32 logits a patch back (25 MB) and summed them with
the Gaussian weights, then took the argmax. Here a case goes to the device once and comes back as
its uint8 labels: the patches are views of it there, the model runs on them through
``Backend.predict_tensors``, and the weighted sums, the summed weights, their division and the class
argmax are device ops in the host's order and float32 arithmetic (a multiply, then an add: no fused
multiply-add), so the labels are the host path's for the same logits. Each backend instance has a
stream of its own (instances on one GPU overlap). Tested on the CPU against the host path (equal
labels); on an H100 in fp16 (2026-12-05) more than 99.95 % of voxels as the host path's.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from ...backends.base import Backend
from .kits19 import INPUT, PREDICTION
from .model import OUTPUT
from .sliding_window import check_logits, gaussian_importance, volume_shape, window_origins

_STREAMS: weakref.WeakKeyDictionary[Backend, Any] = weakref.WeakKeyDictionary()


def _on_device(backend: Backend, dev: Any) -> ExitStack:
    stack = ExitStack()
    stack.enter_context(torch.inference_mode())
    if dev.type == "cuda":
        stream = _STREAMS.get(backend)
        if stream is None:
            stream = _STREAMS[backend] = torch.cuda.Stream(device=dev)
        stack.enter_context(torch.cuda.device(dev))
        stack.enter_context(torch.cuda.stream(stream))
    return stack


def infer(backend: Backend, sample: Mapping[str, np.ndarray], patch: int, batch_size: int = 1) -> dict[str, np.ndarray]:
    """One sample ``{"input": (1, D, H, W)}`` -> ``{"prediction": (D, H, W) uint8}``, as
    ``sliding_window.infer`` with ``backend.predict``, on ``backend.tensor_device()``."""
    place = backend.tensor_device()
    assert place is not None, "a backend with a device entry (pytorch)"
    dev = place[0]
    image = sample[INPUT]
    shape = volume_shape(image)
    origins = window_origins(shape, patch)
    want = (3, patch, patch, patch)
    with _on_device(backend, dev):
        volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev)
        weight = torch.from_numpy(gaussian_importance(patch)).to(dev)
        result = torch.zeros((3, *shape), dtype=torch.float32, device=dev)
        norm = torch.zeros(tuple(shape), dtype=torch.float32, device=dev)
        weighted = torch.empty(want, dtype=torch.float32, device=dev)  # one patch's weighted logits, reused
        for start in range(0, len(origins), batch_size):
            views = [
                (slice(i, i + patch), slice(j, j + patch), slice(k, k + patch))
                for i, j, k in origins[start : start + batch_size]
            ]
            batch = torch.stack([volume[(slice(None), *v)] for v in views])
            logits = backend.predict_tensors({INPUT: batch})[OUTPUT]
            check_logits(logits.shape, len(views), patch)
            for out, view in zip(logits.float(), views, strict=True):
                result[(slice(None), *view)] += torch.mul(out, weight, out=weighted)
                norm[view] += weight  # the reference's norm map, summed in its window order
        result /= norm
        background, kidney, tumour = result
        labels = (kidney > background).to(torch.uint8)
        labels[tumour > torch.maximum(background, kidney)] = 2
        return {PREDICTION: labels.cpu().numpy()}
