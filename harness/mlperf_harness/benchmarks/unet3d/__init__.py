"""3d-unet building blocks for both rounds' datasets, to be wired into the Benchmark contract.

KiTS19 (v6.1, the names exported here): ``kits19`` (dataset layout, the reference's
preprocessing, mean DICE), ``sliding_window`` (the reference's Gaussian-weighted patch inference
and the logged response), ``model`` (the synthetic 3D U-Nets as ONNX), ``synthetic`` (a SYNTHETIC
KiTS19 labelled by that model). BraTS 2019 (v1.0): ``brats`` (nnU-Net's preprocessing, whole-volume
inference, region DICE) and ``brats_synthetic`` (its synthetic model and dataset).
"""

from __future__ import annotations

from ..base import PendingBenchmark
from .kits19 import preprocess, score
from .model import build_model
from .sliding_window import collate, infer, responses
from .synthetic import synthesize_dataset


class Unet3D(PendingBenchmark):
    name = "3d-unet"
    capabilities = {"dataset": False, "model": False, "preprocess": False, "accuracy": False, "synthetic": False}


__all__ = ["Unet3D", "build_model", "collate", "infer", "preprocess", "responses", "score", "synthesize_dataset"]
