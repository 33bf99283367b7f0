"""ssd-resnet34: COCO 2017 val at 1200x1200 with MLPerf's SSD-ResNet34 ONNX model (v1.0 only).

``SSDResNet34`` (benchmark.py) is the benchmark on the contract; its parts: ``model.build_model``
(the synthetic model), ``coco.synthesize_dataset`` / ``coco.preprocess`` (the dataset and the
reference's preprocessing), ``pipeline.infer`` / ``responses`` (what LoadGen logs) and
``accuracy.score`` (accuracy-coco.py --use-inv-map).
"""

from __future__ import annotations

from .accuracy import score
from .benchmark import SSDResNet34
from .coco import preprocess, preprocess_image, synthesize_dataset
from .model import build_model
from .pipeline import infer, responses

__all__ = [
    "SSDResNet34",
    "build_model",
    "infer",
    "preprocess",
    "preprocess_image",
    "responses",
    "score",
    "synthesize_dataset",
]
