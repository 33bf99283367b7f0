"""Batches, model calls and LoadGen responses for SSD-ResNet34, as the reference's ONNX path does them.

The model (official or synthetic) takes one image per call, ``image`` (1, 3, S, S), and returns a
variable number of detections; ``infer`` runs a batch image by image and pads the detections to the
batch's largest count, with ``num_detections`` saying how many are real.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ...backends.base import TensorSpec
from . import model as ssd_model

Run = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
RESPONSE_FIELDS = 7  # image_idx, ymin, xmin, ymax, xmax, score, label (float32 each)


def input_specs(image_size: int = ssd_model.IMAGE_SIZE) -> list[TensorSpec]:
    """The per-sample model input (no batch dimension)."""
    return [TensorSpec(ssd_model.INPUT, (3, image_size, image_size), "float32")]


def sample_specs(image_size: int = ssd_model.IMAGE_SIZE) -> list[TensorSpec]:
    """What ``coco.preprocess`` yields per sample: the image and its QSL index."""
    return [*input_specs(image_size), TensorSpec("image_idx", (), "int64")]


def output_specs() -> list[TensorSpec]:
    """The official model's outputs for one image (N detections, N varies)."""
    return [
        TensorSpec(ssd_model.BBOXES, (1, None, 4), "float32"),
        TensorSpec(ssd_model.LABELS, (1, None), "int64"),
        TensorSpec(ssd_model.SCORES, (1, None), "float32"),
    ]


def collate(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack samples into a batch: ``image`` (N, 3, S, S) and ``image_idx`` (N,)."""
    return {
        ssd_model.INPUT: np.stack([s[ssd_model.INPUT] for s in samples]).astype(np.float32, copy=False),
        "image_idx": np.array([int(s["image_idx"]) for s in samples], dtype=np.int64),
    }


def infer(run: Run, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One model call per image (the model's batch is 1), then the detections padded to the
    largest count: ``bboxes`` (N, M, 4), ``labels`` (N, M), ``scores`` (N, M), ``num_detections`` (N,)."""
    images = batch[ssd_model.INPUT]
    if images.ndim == 3:
        images = images[None]
    per_image = []
    for img in images:
        out = run({ssd_model.INPUT: np.ascontiguousarray(img[None])})
        boxes, labels, scores = (np.asarray(out[k]) for k in ssd_model.OUTPUTS)
        per_image.append((boxes.reshape(-1, 4), labels.reshape(-1), scores.reshape(-1)))
    n, m = len(per_image), max((len(s) for _, _, s in per_image), default=0)
    bboxes, labels_out = np.zeros((n, m, 4), np.float32), np.zeros((n, m), np.int64)
    scores_out = np.zeros((n, m), np.float32)
    for i, (boxes, labels, scores) in enumerate(per_image):
        k = len(scores)
        bboxes[i, :k], labels_out[i, :k], scores_out[i, :k] = boxes, labels, scores
    result: dict[str, np.ndarray] = {
        ssd_model.BBOXES: bboxes,
        ssd_model.LABELS: labels_out,
        ssd_model.SCORES: scores_out,
        "num_detections": np.array([len(s) for _, _, s in per_image], dtype=np.int64),
    }
    return result


def responses(outputs: Mapping[str, np.ndarray], samples: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """What the reference's PostProcessCocoOnnx logs per image: float32 rows of
    [image_idx, ymin, xmin, ymax, xmax, score, label] for the detections down to score 0.5 (the
    model's boxes are ltrb, so x and y swap), label as the model gives it (1..80: accuracy-coco.py
    needs --use-inv-map). An image without such detections responds with no bytes."""
    result = []
    for i, sample in enumerate(samples):
        rows = []
        for j in range(int(outputs["num_detections"][i])):
            score = outputs[ssd_model.SCORES][i, j]
            if score < ssd_model.REPORT_SCORE:
                break  # scores come sorted, highest first
            left, top, right, bottom = outputs[ssd_model.BBOXES][i, j]
            label = float(outputs[ssd_model.LABELS][i, j])
            rows.append([float(sample["image_idx"]), top, left, bottom, right, score, label])
        result.append(np.array(rows, dtype=np.float32).reshape(-1))
    return result
