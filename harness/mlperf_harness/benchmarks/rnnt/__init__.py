"""rnnt: LibriSpeech dev-clean, RNN-T (MLPerf v1.0), 100 - WER.

Building blocks, as plain functions, for the harness to wire in:
``convert_dataset`` / ``synthesize_dataset`` (data), ``build_model`` (three ONNX graphs),
``preprocess`` / ``collate`` / ``infer`` / ``responses`` (pipeline) and ``score`` (accuracy).
"""

from __future__ import annotations

from ..base import PendingBenchmark
from .accuracy import score, word_error_rate
from .data import (
    BLANK,
    LABELS,
    MAX_DURATION,
    Utterance,
    convert_dataset,
    load_manifest,
    preprocess,
    read_wav,
    synthesize_dataset,
)
from .decoder import collate, greedy_decode, infer, responses
from .features import FEATURES, filterbank_features
from .model import SAMPLE_SPECS, build_model, onnx_runner


class Rnnt(PendingBenchmark):
    name = "rnnt"
    capabilities = {"dataset": False, "model": False, "preprocess": False, "accuracy": False, "synthetic": False}


__all__ = [
    "BLANK",
    "FEATURES",
    "LABELS",
    "MAX_DURATION",
    "SAMPLE_SPECS",
    "Rnnt",
    "Utterance",
    "build_model",
    "collate",
    "convert_dataset",
    "filterbank_features",
    "greedy_decode",
    "infer",
    "load_manifest",
    "onnx_runner",
    "preprocess",
    "read_wav",
    "responses",
    "score",
    "synthesize_dataset",
    "word_error_rate",
]
