"""Batches, model calls and LoadGen responses for SSD-ResNet34, as the reference's ONNX path does them.

The model takes ``image`` (B, 3, S, S) and returns a variable number of detections per image, padded
to the batch's largest count with zero scores (which ``responses`` never logs). The official graph's
B is fixed at 1, so ``infer`` runs it image by image; the synthetic graph takes the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ...backends.base import TensorSpec
from . import model as ssd_model

Run = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
RESPONSE_FIELDS = 7  # image_idx, ymin, xmin, ymax, xmax, score, label (float32 each)


def input_specs(image_size: int | None = None) -> tuple[TensorSpec, ...]:
    """The per-sample model input (no batch dimension); ``None``: the size the model was built for
    (1200 for the official model, 400 for the small synthetic one)."""
    return (TensorSpec(ssd_model.INPUT, (3, image_size, image_size), "float32"),)


def output_specs() -> tuple[TensorSpec, ...]:
    """The official model's outputs for one image, less its batch dimension (N detections, N varies)."""
    return (
        TensorSpec(ssd_model.BBOXES, (None, 4), "float32"),
        TensorSpec(ssd_model.LABELS, (None,), "int64"),
        TensorSpec(ssd_model.SCORES, (None,), "float32"),
    )


def infer(run: Run, batch: Mapping[str, np.ndarray], per_call: int | None = None) -> dict[str, np.ndarray]:
    """The detections of a batch of images: one model call, or calls of ``per_call`` images for a
    graph of fixed batch (the official one's 1), padded with zero scores to the batch's largest
    count: ``bboxes`` (N, M, 4), ``labels`` (N, M), ``scores`` (N, M)."""
    images = batch[ssd_model.INPUT]
    if images.ndim == 3:
        images = images[None]
    step = per_call or len(images)
    calls = [
        [np.asarray(out[k]) for k in ssd_model.OUTPUTS]
        for out in (
            run({ssd_model.INPUT: np.ascontiguousarray(images[i : i + step])}) for i in range(0, len(images), step)
        )
    ]
    if len(calls) == 1:
        boxes, labels, scores = calls[0]
        return {ssd_model.BBOXES: boxes, ssd_model.LABELS: labels, ssd_model.SCORES: scores}
    n, m = len(images), max(c[2].shape[1] for c in calls)
    bboxes, labels_out = np.zeros((n, m, 4), np.float32), np.zeros((n, m), np.int64)
    scores_out = np.zeros((n, m), np.float32)
    for i, (boxes, labels, scores) in zip(range(0, n, step), calls, strict=True):
        k, rows = scores.shape[1], len(scores)
        bboxes[i : i + rows, :k], labels_out[i : i + rows, :k], scores_out[i : i + rows, :k] = boxes, labels, scores
    return {ssd_model.BBOXES: bboxes, ssd_model.LABELS: labels_out, ssd_model.SCORES: scores_out}


def responses(outputs: Mapping[str, np.ndarray], indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """What the reference's PostProcessCocoOnnx logs per image: float32 rows of
    [qsl index, ymin, xmin, ymax, xmax, score, label] for the detections down to score 0.5 (the
    model's boxes are ltrb, so x and y swap), label as the model gives it (1..80: accuracy-coco.py
    needs --use-inv-map). An image without such detections responds with no bytes; padding (score
    0) never reaches 0.5. ``outputs`` are batched (N, M, ...), one image per row."""
    boxes, scores, labels = outputs[ssd_model.BBOXES], outputs[ssd_model.SCORES], outputs[ssd_model.LABELS]
    result = []
    for i, idx in enumerate(np.asarray(indices).tolist()):
        s = scores[i].reshape(-1)
        keep = s >= ssd_model.REPORT_SCORE  # scores come sorted, highest first; padding is 0
        rows = np.empty((int(keep.sum()), RESPONSE_FIELDS), np.float32)
        left, top, right, bottom = boxes[i].reshape(-1, 4)[keep].T
        rows[:, 0] = idx
        rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4] = top, left, bottom, right
        rows[:, 5] = s[keep]
        rows[:, 6] = labels[i].reshape(-1)[keep]
        result.append(rows.reshape(-1))
    return result
