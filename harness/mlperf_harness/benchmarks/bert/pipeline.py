"""Samples, batches and responses: what the harness moves between the QSL, the model and LoadGen.

A sample is one feature: input_ids, input_mask, segment_ids, int32 (384,) each (as stored). The
model takes them as int64 (batch, 384) and answers start and end logits (batch, 384); the response
LoadGen logs for a sample is those two stacked per token, float32 (384, 2), as the reference's
onnxruntime SUT sends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Sized
from pathlib import Path

import numpy as np

from ...backends.base import TensorSpec
from .model import INPUTS, OUTPUTS
from .squad import MAX_SEQ_LENGTH, load_features

Sample = dict[str, np.ndarray]
SAMPLE_SPECS = tuple(TensorSpec(name, (MAX_SEQ_LENGTH,), "int32") for name in INPUTS)
OUTPUT_SPECS = tuple(TensorSpec(name, (MAX_SEQ_LENGTH,), "float32") for name in OUTPUTS)
# bert_large_v1_1_fake_quant.onnx (the reference's --quantized model) names two inputs differently.
FAKE_QUANT_NAMES = {"input_mask": "attention_mask", "segment_ids": "token_type_ids"}


def preprocess(dataset_dir: Path, vocab_path: Path | None = None) -> list[Sample]:
    """One sample per feature, in the reference's order (the QSL index order): 10,833 on the real
    dev-v1.1.json."""
    _, features = load_features(dataset_dir, vocab_path)
    return [{"input_ids": f.input_ids, "input_mask": f.input_mask, "segment_ids": f.segment_ids} for f in features]


def collate(samples: list[Sample], names: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Stack samples into the model's int64 (batch, 384) inputs (the official model's dtype); ``names``
    renames them for a model with other input names (FAKE_QUANT_NAMES for the INT8 ONNX model)."""
    names = names or {}
    return {names.get(n, n): np.stack([s[n] for s in samples]).astype(np.int64) for n in INPUTS}


def to_model(batch: Mapping[str, np.ndarray], model_inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """A stacked int32 batch as the model takes it: each tensor under the model's name for it
    (the fake-quant model's names where the model has those) and in the model's dtype (int64 for the
    official ONNX models; an engine that takes int32 gets the batch as it is)."""
    specs = {s.name: s for s in model_inputs}
    feeds: dict[str, np.ndarray] = {}
    for name, x in batch.items():
        target = name if name in specs or not specs else FAKE_QUANT_NAMES.get(name, name)
        dtype = np.dtype(specs[target].dtype) if target in specs else np.dtype(np.int64)
        feeds[target] = x if x.dtype == dtype else x.astype(dtype)
    return feeds


def infer(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], batch: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """One model call per batch: BERT needs nothing more."""
    return run(batch)


def responses(outputs: Mapping[str, np.ndarray], samples: Sized) -> np.ndarray:
    """Per sample float32 (seq, 2): start logit then end logit for each token; one (n, seq, 2) array
    for the batch (every response the same size)."""
    stacked = np.stack([outputs[OUTPUTS[0]], outputs[OUTPUTS[1]]], axis=-1).astype(np.float32, copy=False)
    if stacked.shape[0] != len(samples):
        raise ValueError(f"model answered {stacked.shape[0]} rows for {len(samples)} samples")
    return stacked
