"""bert: declared, not implemented yet. Planned: SQuAD v1.1 dev (seq 384), BERT-Large, F1 via accuracy-squad."""

from __future__ import annotations

from .base import PendingBenchmark


class Bert(PendingBenchmark):
    name = "bert"
    capabilities = {"dataset": False, "model": False, "preprocess": False, "accuracy": False, "synthetic": False}
