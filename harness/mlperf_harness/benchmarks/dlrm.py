"""dlrm: declared, not implemented yet. Planned: Criteo Terabyte day 23, DLRM tb00_40M, AUC."""

from __future__ import annotations

from .base import PendingBenchmark


class Dlrm(PendingBenchmark):
    name = "dlrm"
    capabilities = {"dataset": False, "model": False, "preprocess": False, "accuracy": False, "synthetic": False}
