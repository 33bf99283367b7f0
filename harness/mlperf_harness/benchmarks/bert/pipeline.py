"""Samples, batches and responses: what the harness moves between the QSL, the model and LoadGen.

A sample is one feature: input_ids, input_mask, segment_ids, int32 (384,) each (as stored). The
model takes them as int64 (batch, seq) and answers start and end logits (batch, seq); the response
LoadGen logs for a sample is those two stacked per token, float32 (384, 2), as the reference's
onnxruntime SUT sends.

A model whose sequence axis is dynamic gets each batch trimmed to its longest real sequence (the
input mask) rounded up to a multiple of 64 (``trim``): the padding past it changes no real token's
logits (the attention mask gives padded keys -10000, nothing after a softmax), and a few lengths
keep a CUDA graph per (batch, length). Padded tokens are never an answer, but their logits can
take n-best slots in accuracy-squad.py; so every padded token's logits are -10000 in the response
(``mask_padding``, what the official script gives tokens past a shorter response), which makes
the answers the same whatever the batch's length.
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
SEQ_BUCKET = 64  # trimmed lengths: 64, 128, ... 384 (six per batch bucket)
PAD_LOGIT = np.float32(-10000.0)  # accuracy-squad.py's logit for tokens past a response's end
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


def real_lengths(mask: np.ndarray) -> np.ndarray:
    """Each sample's real sequence: one past its last unmasked token (``input_mask`` (n, 384))."""
    used = mask != 0
    return np.where(used.any(axis=1), mask.shape[1] - np.argmax(used[:, ::-1], axis=1), 0)


def seq_bucket(mask: np.ndarray) -> int:
    """The batch's longest real sequence (``input_mask`` (batch, 384)) rounded up to a multiple of
    SEQ_BUCKET, at most 384."""
    longest = max(int(real_lengths(mask).max(initial=0)), 1)
    return min(MAX_SEQ_LENGTH, -(-longest // SEQ_BUCKET) * SEQ_BUCKET)


def warm_batches(batch: int) -> list[dict[str, np.ndarray]]:
    """One batch of zero tokens per trimmed length (``seq_bucket``) and per power of two up to
    ``batch`` (and ``batch``): every shape ``trim`` gives a run's batches."""
    sizes = sorted({*(1 << k for k in range(batch.bit_length()) if 1 << k <= batch), batch})
    out = []
    for width in range(SEQ_BUCKET, MAX_SEQ_LENGTH + 1, SEQ_BUCKET):
        for n in sizes:
            feeds = {s.name: s.zeros(n) for s in SAMPLE_SPECS}
            feeds["input_mask"][:, :width] = 1
            out.append(feeds)
    return out


def dynamic_sequence(model_inputs: Sequence[TensorSpec]) -> bool:
    """Whether the model takes any sequence length: every input (batch, seq) with seq dynamic (the
    synthetic models; a graph fixed at 384 gets the full batch)."""
    return bool(model_inputs) and all(s.shape == (None,) for s in model_inputs)


def trim(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stacked batch cut to ``seq_bucket`` of its input mask (views, no copy)."""
    width = seq_bucket(batch["input_mask"])
    return {name: x[:, :width] for name, x in batch.items()}


def mask_padding(outputs: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The model's logits with every padded token's (``mask`` 0, (batch, 384)) set to PAD_LOGIT;
    other outputs as they are."""
    out = dict(outputs)
    for name in OUTPUTS:
        if name in out:
            logits = out[name]
            out[name] = np.where(mask[:, : logits.shape[1]] == 0, PAD_LOGIT, logits)
    return out


def infer(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], batch: dict[str, np.ndarray], dynamic: bool = True
) -> dict[str, np.ndarray]:
    """One model call per batch, cut to ``trim`` where the model takes any sequence length
    (``dynamic``); the padded tokens' logits masked (``mask_padding``)."""
    return mask_padding(run(trim(batch) if dynamic else batch), batch["input_mask"])


def responses(outputs: Mapping[str, np.ndarray], samples: Sized) -> np.ndarray:
    """Per sample float32 (384, 2): start logit then end logit for each token, tokens past a trimmed
    batch's length PAD_LOGIT (as accuracy-squad.py pads a shorter response); one (n, 384, 2) array
    for the batch (every response the same size, whatever the batch's length)."""
    start, end = outputs[OUTPUTS[0]], outputs[OUTPUTS[1]]
    if start.shape[0] != len(samples):
        raise ValueError(f"model answered {start.shape[0]} rows for {len(samples)} samples")
    width = start.shape[1]
    stacked = np.full((len(start), max(width, MAX_SEQ_LENGTH), 2), PAD_LOGIT, np.float32)
    stacked[:, :width, 0], stacked[:, :width, 1] = start, end
    return stacked
