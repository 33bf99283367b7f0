"""ssd-resnet34: declared, not implemented yet.

Planned: COCO 2017 val at 1200x1200, SSD-ResNet34 ONNX, mAP via pycocotools (inverse class map).
"""

from __future__ import annotations

from .base import PendingBenchmark


class SSDResNet34(PendingBenchmark):
    name = "ssd-resnet34"
    capabilities = {"dataset": False, "model": False, "preprocess": False, "accuracy": False, "synthetic": False}
