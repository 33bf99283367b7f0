"""3d-unet: declared, not implemented yet.

Planned: BraTS 2019 fold 1 (nnU-Net preprocessing), 3D U-Net ONNX, mean DICE.
"""

from __future__ import annotations

from .base import PendingBenchmark


class Unet3D(PendingBenchmark):
    name = "3d-unet"
    capabilities = {"dataset": False, "model": False, "preprocess": False, "accuracy": False, "synthetic": False}
