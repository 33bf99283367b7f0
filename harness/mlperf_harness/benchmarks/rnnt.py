"""rnnt: declared, not implemented yet. Planned: LibriSpeech dev-clean, RNN-T, 100 - WER."""

from __future__ import annotations

from .base import PendingBenchmark


class Rnnt(PendingBenchmark):
    name = "rnnt"
    capabilities = {"dataset": False, "model": False, "preprocess": False, "accuracy": False, "synthetic": False}
