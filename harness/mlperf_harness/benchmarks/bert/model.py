"""A BERT-for-SQuAD ONNX graph of the real architecture with random weights (fixed seed).

Same interface as MLPerf's FP32 ``model.onnx`` (bert_tf_v1_1_large_fp32_384_v2): inputs ``input_ids``,
``input_mask``, ``segment_ids`` (batch, seq) int64; outputs ``output_start_logits`` and
``output_end_logits`` (batch, seq) float32, in that order (the reference's SUT stacks the outputs in
session order, start first). Post-LN encoder as in BERT: embeddings (word + position + token type,
LayerNorm), then per layer multi-head self-attention and a GELU feed-forward, each added to its input
and LayerNormed; the QA head maps every token to (start, end) logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...fsutil import temp_path_for

INPUTS = ("input_ids", "input_mask", "segment_ids")
OUTPUTS = ("output_start_logits", "output_end_logits")
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
OPSET = 17  # LayerNormalization


@dataclass(frozen=True)
class BertSize:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int = 512
    type_vocab: int = 2


SIZES = {
    "full": BertSize(layers=24, hidden=1024, heads=16, intermediate=4096, vocab=30522),  # BERT-Large
    "small": BertSize(layers=2, hidden=128, heads=2, intermediate=512, vocab=1024),
}


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...], std: float) -> str:
        w = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        self.inits.append(numpy_helper.from_array(w.astype(np.float32), name))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(self, x: str, name: str, n_in: int, n_out: int, gain: float = 1.0) -> str:
        # 1/sqrt(fan_in) keeps activations O(1) through the layers with random weights.
        w = self.weight(f"{name}.weight", (n_in, n_out), gain / np.sqrt(n_in))
        b = self.weight(f"{name}.bias", (n_out,), 0.02)
        return self.node("Add", [self.node("MatMul", [x, w], f"{name}.mm"), b], f"{name}.out")

    def layer_norm(self, x: str, name: str, hidden: int) -> str:
        g = self.const(f"{name}.weight", np.ones(hidden, np.float32))
        b = self.const(f"{name}.bias", np.zeros(hidden, np.float32))
        return self.node("LayerNormalization", [x, g, b], f"{name}.out", axis=-1, epsilon=1e-12)


def build(seed: int, size: str = "small") -> onnx.ModelProto:
    cfg = SIZES[size]
    g = _Builder(np.random.default_rng(seed))
    h, heads = cfg.hidden, cfg.heads
    head_dim = h // heads

    # Embeddings: word + position (0..seq-1) + token type.
    words = g.node("Gather", [g.weight(WORD_EMBEDDINGS, (cfg.vocab, h), 1.0), "input_ids"], "emb.words")
    shape = g.node("Shape", ["input_ids"], "emb.shape")
    seq = g.node("Gather", [shape, g.const("one", np.array(1, np.int64))], "emb.seq")
    positions = g.node("Range", [g.const("zero", np.array(0, np.int64)), seq, "one"], "emb.positions")
    pos_table = g.weight("bert.embeddings.position_embeddings.weight", (cfg.max_positions, h), 1.0)
    pos = g.node("Gather", [pos_table, positions], "emb.pos")
    type_table = g.weight("bert.embeddings.token_type_embeddings.weight", (cfg.type_vocab, h), 1.0)
    types = g.node("Gather", [type_table, "segment_ids"], "emb.types")
    x = g.node("Add", [g.node("Add", [words, pos], "emb.sum1"), types], "emb.sum")
    x = g.layer_norm(x, "bert.embeddings.LayerNorm", h)

    # Attention bias: 0 where input_mask is 1, -10000 on padding, shaped (batch, 1, 1, seq).
    mask = g.node("Cast", ["input_mask"], "mask.float", to=TensorProto.FLOAT)
    bias = g.node(
        "Mul",
        [
            g.node("Sub", [g.const("onef", np.array(1.0, np.float32)), mask], "mask.inv"),
            g.const("neg", np.array(-10000.0, np.float32)),
        ],
        "mask.bias",
    )
    bias = g.node("Unsqueeze", [bias, g.const("mask.axes", np.array([1, 2], np.int64))], "mask.bias4")
    split_heads = g.const("split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = g.const("merge_heads", np.array([0, 0, h], np.int64))
    scale = g.const("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    g.const("rsqrt2", np.array(2**-0.5, np.float32))
    g.const("half", np.array(0.5, np.float32))

    # The residual branches' gain: at 1, BERT-Large's 24 random layers average every token into the
    # same vector (its start logits varied by 0.002 over a sequence, so no span was a clear answer);
    # sqrt(2 / layers) keeps each token's identity through the depth, and leaves 2 layers as they were.
    branch = float(np.sqrt(2 / cfg.layers))
    for i in range(cfg.layers):
        p = f"bert.encoder.layer.{i}"

        def heads_of(t: str, name: str, perm: list[int]) -> str:
            return g.node("Transpose", [g.node("Reshape", [t, split_heads], f"{name}.r")], f"{name}.t", perm=perm)

        q = heads_of(g.linear(x, f"{p}.attention.self.query", h, h), f"{p}.q", [0, 2, 1, 3])
        k = heads_of(g.linear(x, f"{p}.attention.self.key", h, h), f"{p}.k", [0, 2, 3, 1])
        v = heads_of(g.linear(x, f"{p}.attention.self.value", h, h), f"{p}.v", [0, 2, 1, 3])
        scores = g.node("Mul", [g.node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scaled")
        probs = g.node("Softmax", [g.node("Add", [scores, bias], f"{p}.masked")], f"{p}.probs", axis=-1)
        ctx = g.node("Transpose", [g.node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t", perm=[0, 2, 1, 3])
        ctx = g.node("Reshape", [ctx, merge_heads], f"{p}.ctx.r")
        att = g.linear(ctx, f"{p}.attention.output.dense", h, h, gain=branch)
        x = g.layer_norm(g.node("Add", [att, x], f"{p}.res1"), f"{p}.attention.output.LayerNorm", h)

        inner = g.linear(x, f"{p}.intermediate.dense", h, cfg.intermediate)
        # GELU, erf form: x * 0.5 * (1 + erf(x / sqrt(2))).
        scaled = g.node("Mul", [inner, "rsqrt2"], f"{p}.gelu.s")
        erf = g.node("Erf", [scaled], f"{p}.gelu.erf")
        half = g.node("Mul", [g.node("Add", [erf, "onef"], f"{p}.gelu.a"), "half"], f"{p}.gelu.h")
        act = g.node("Mul", [inner, half], f"{p}.gelu")
        out = g.linear(act, f"{p}.output.dense", cfg.intermediate, h, gain=branch)
        x = g.layer_norm(g.node("Add", [out, x], f"{p}.res2"), f"{p}.output.LayerNorm", h)

    # QA head: gain so the logits spread over a few units and the best span stands out.
    logits = g.linear(x, "qa_outputs", h, 2, gain=3.0)
    g.nodes.append(
        helper.make_node(
            "Split",
            [logits, g.const("split2", np.array([1, 1], np.int64))],
            ["qa.start", "qa.end"],
            axis=-1,
            name="qa.split",
        )
    )
    last = g.const("last_axis", np.array([-1], np.int64))
    g.node("Squeeze", ["qa.start", last], OUTPUTS[0])
    g.node("Squeeze", ["qa.end", last], OUTPUTS[1])

    dims = ["batch_size", "seq_len"]
    graph = helper.make_graph(
        g.nodes,
        f"bert_squad_synthetic_{size}",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in INPUTS],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in OUTPUTS],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlperf_harness")
    model.doc_string = f"SYNTHETIC BERT for SQuAD ({size}: {cfg}); random weights, seed {seed}"
    model.ir_version = 8
    return model


def build_model(path: Path, seed: int, size: str = "small") -> Path:
    """Write the synthetic model to ``path`` (atomically) and the synthetic vocab.txt beside it, as the
    real model directory holds its vocab.txt."""
    from .synthetic import synthetic_vocab, write_vocab

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    model = build(seed, size)
    with temp_path_for(path) as tmp:
        onnx.save(model, str(tmp))
    write_vocab(path.parent / "vocab.txt", synthetic_vocab(SIZES[size].vocab))
    return path


def vocab_size(model_path: Path) -> int:
    """The word-embedding rows of a model: the vocab.txt that goes with it has this many lines."""
    model = onnx.load(str(model_path), load_external_data=False)
    for init in model.graph.initializer:
        if init.name == WORD_EMBEDDINGS:
            return int(init.dims[0])
    raise ValueError(f"{model_path}: no {WORD_EMBEDDINGS} initializer (not a synthetic BERT model)")
