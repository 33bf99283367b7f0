"""The synthetic BERT: the official model's interface, deterministic, and BERT's computation (checked
against a forward pass written out here in numpy from the model's own weights)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlperf_harness.benchmarks.bert import model as bert_model
from onnx import numpy_helper


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_model.build_model(tmp_path_factory.mktemp("bert") / "model.onnx", seed=7, size="small")


def _inputs(rng: np.random.Generator, batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    ids = rng.integers(5, vocab, (batch, seq)).astype(np.int64)
    mask = np.zeros((batch, seq), np.int64)
    segment = np.zeros((batch, seq), np.int64)
    for b in range(batch):
        n = int(rng.integers(seq // 2, seq))
        mask[b, :n] = 1
        segment[b, n // 3 : n] = 1
        ids[b, n:] = 0
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segment}


def test_interface_is_the_official_models(small: Path) -> None:
    sess = ort.InferenceSession(str(small), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [
        ("input_ids", "tensor(int64)"),
        ("input_mask", "tensor(int64)"),
        ("segment_ids", "tensor(int64)"),
    ]
    # Session order is start then end: the reference's SUT stacks them in this order.
    assert [(o.name, o.type) for o in sess.get_outputs()] == [
        ("output_start_logits", "tensor(float)"),
        ("output_end_logits", "tensor(float)"),
    ]
    start, end = sess.run(None, _inputs(np.random.default_rng(0), 3, 384, 1024))
    assert start.shape == end.shape == (3, 384) and start.dtype == np.float32
    assert "SYNTHETIC" in onnx.load(str(small)).doc_string
    vocab = (small.parent / "vocab.txt").read_text().splitlines()
    assert len(vocab) == bert_model.vocab_size(small) == 1024 and vocab[:5] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]


def test_deterministic_from_seed(small: Path, tmp_path: Path) -> None:
    again = bert_model.build_model(tmp_path / "a" / "model.onnx", seed=7, size="small")
    other = bert_model.build_model(tmp_path / "b" / "model.onnx", seed=8, size="small")
    assert again.read_bytes() == small.read_bytes()
    assert other.read_bytes() != small.read_bytes()


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * g + b


def _erf(x: np.ndarray) -> np.ndarray:
    import math

    return np.vectorize(math.erf)(x)


def reference_bert(w: dict[str, np.ndarray], feed: dict[str, np.ndarray], layers: int, heads: int) -> np.ndarray:
    """BERT for SQuAD, post-LN, written out: returns (batch, seq, 2) logits."""
    ids, mask, seg = feed["input_ids"], feed["input_mask"], feed["segment_ids"]
    seq = ids.shape[1]
    e = "bert.embeddings."
    x = (
        w[e + "word_embeddings.weight"][ids]
        + w[e + "position_embeddings.weight"][:seq]
        + w[e + "token_type_embeddings.weight"][seg]
    )
    x = _layer_norm(x, w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"])
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."

        def lin(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return t @ w[p + name + ".weight"] + w[p + name + ".bias"]

        def split(t: np.ndarray) -> np.ndarray:
            b, s, h = t.shape
            return t.reshape(b, s, heads, h // heads).transpose(0, 2, 1, 3)

        q, k, v = (split(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = _layer_norm(
            lin(ctx, "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        inner = lin(x, "intermediate.dense")
        gelu = inner * 0.5 * (1.0 + _erf(inner / np.sqrt(2.0)))
        x = _layer_norm(lin(gelu, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    return x @ w["qa_outputs.weight"] + w["qa_outputs.bias"]


def test_computes_bert(small: Path) -> None:
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(small)).graph.initializer}
    feed = _inputs(np.random.default_rng(1), 2, 64, 1024)
    cfg = bert_model.SIZES["small"]
    want = reference_bert(weights, feed, cfg.layers, cfg.heads)
    start, end = ort.InferenceSession(str(small), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_allclose(start, want[..., 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(end, want[..., 1], rtol=1e-4, atol=1e-4)
    # Logits spread over a few units: the best span stands out from the rest.
    assert 0.5 < float(start[feed["input_mask"] == 1].std()) < 10


def test_full_size_is_bert_large() -> None:
    c = bert_model.SIZES["full"]
    assert (c.layers, c.hidden, c.heads, c.intermediate, c.vocab) == (24, 1024, 16, 4096, 30522)
    per_layer = (
        4 * (c.hidden * c.hidden + c.hidden) + 2 * c.hidden * c.intermediate + c.intermediate + c.hidden + 4 * c.hidden
    )
    params = c.layers * per_layer + (c.vocab + c.max_positions + c.type_vocab + 2) * c.hidden + 2 * c.hidden + 2
    assert 330e6 < params < 340e6  # BERT-Large with the QA head: about 335 M


@pytest.mark.skipif(not os.environ.get("MLPERF_BERT_FULL"), reason="1.3 GB model: set MLPERF_BERT_FULL=1 to build it")
def test_full_model_builds_and_runs(tmp_path: Path) -> None:
    path = bert_model.build_model(tmp_path / "model.onnx", seed=1, size="full")
    start, _ = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, _inputs(np.random.default_rng(0), 1, 384, 30522)
    )
    assert start.shape == (1, 384)
