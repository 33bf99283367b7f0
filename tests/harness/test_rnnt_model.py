"""The RNN-T graphs against the reference modules' operations written out in numpy (torch.nn.LSTM's
gates, StackTime, the embedding with the start symbol's zero input, the joint's two linears), their
interface and widths, and the conversion of a checkpoint-style state dict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from mlperf_harness.benchmarks.rnnt import model as M
from mlperf_harness.errors import HarnessError


def sig(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def lstm(
    x: np.ndarray,
    state: dict[str, np.ndarray],
    prefix: str,
    layer: int,
    h: np.ndarray | None = None,
    c: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """torch.nn.LSTM, one layer, one utterance: x (T, in) -> (T, H), (h, c)."""
    w_ih, w_hh = state[f"{prefix}.weight_ih_l{layer}"], state[f"{prefix}.weight_hh_l{layer}"]
    b = state[f"{prefix}.bias_ih_l{layer}"] + state[f"{prefix}.bias_hh_l{layer}"]
    hidden = w_hh.shape[1]
    h = np.zeros(hidden) if h is None else h
    c = np.zeros(hidden) if c is None else c
    out = []
    for xt in x:
        i, f, g, o = np.split(w_ih @ xt + w_hh @ h + b, 4)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.array(out), (h, c)


def reference_encoder(x: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
    for layer in range(2):
        x, _ = lstm(x, state, M.PRE_RNN, layer)
    later = np.concatenate([x[1:], np.zeros_like(x[:1])])
    x = np.concatenate([x, later], axis=1)[::2]
    for layer in range(3):
        x, _ = lstm(x, state, M.POST_RNN, layer)
    return x


def small_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    enc, pred, joint = M.SIZES["small"]
    return {
        **M._lstm_weights(rng, M.PRE_RNN, 2, 240, enc),
        **M._lstm_weights(rng, M.POST_RNN, 3, 2 * enc, enc),
        M.EMBED: rng.standard_normal((28, pred)).astype(np.float32),
        **M._lstm_weights(rng, M.PRED_RNN, 2, pred, pred),
        "joint_net.0.weight": (rng.standard_normal((joint, enc + pred)) * 0.1).astype(np.float32),
        "joint_net.0.bias": rng.standard_normal(joint).astype(np.float32),
        "joint_net.3.weight": (rng.standard_normal((29, joint)) * 0.1).astype(np.float32),
        "joint_net.3.bias": rng.standard_normal(29).astype(np.float32),
    }


def test_graphs_compute_the_reference_modules(tmp_path: Path) -> None:
    state = small_state()
    M.write_graphs(M.checkpoint_graphs(state), tmp_path)  # the checkpoint's own "joint_net" names
    run = M.onnx_runner(tmp_path)
    rng = np.random.default_rng(1)
    # Two utterances of different lengths in one batch, one of them odd: the padding must not leak.
    feats = [rng.standard_normal((t, 240)).astype(np.float32) for t in (13, 8)]
    batch = np.zeros((2, 13, 240), np.float32)
    for i, f in enumerate(feats):
        batch[i, : len(f)] = f
    out = run("encoder", {"feature": batch, "feature_length": np.array([13, 8])})
    assert out["encoded_length"].tolist() == [7, 4]
    for i, f in enumerate(feats):
        want = reference_encoder(f.astype(np.float64), state)
        np.testing.assert_allclose(out["encoded"][i, : len(want)], want, atol=2e-5)
    # Prediction: the start symbol (zero input, zero state), then label 5 from the state it left.
    zeros = np.zeros((1, 2, 64), np.float32)
    p0 = run("prediction", {"symbol": np.array([[M.SOS]]), "hidden": zeros, "cell": zeros})
    y, (h1, c1) = lstm(np.zeros((1, 64)), state, M.PRED_RNN, 0)
    y, (h2, c2) = lstm(y, state, M.PRED_RNN, 1)
    np.testing.assert_allclose(p0["g"][0], y, atol=1e-5)
    p1 = run("prediction", {"symbol": np.array([[5]]), "hidden": p0["hidden_out"], "cell": p0["cell_out"]})
    y, _ = lstm(state[M.EMBED][5][None].astype(np.float64), state, M.PRED_RNN, 0, h1, c1)
    y, _ = lstm(y, state, M.PRED_RNN, 1, h2, c2)
    np.testing.assert_allclose(p1["g"][0], y, atol=1e-5)
    # Joint: Linear, ReLU, Linear on [f; g].
    f, g = out["encoded"][0, :1], p1["g"][:, 0]
    z = np.concatenate([f, g], axis=1)
    hid = np.maximum(z @ state["joint_net.0.weight"].T + state["joint_net.0.bias"], 0)
    want = hid @ state["joint_net.3.weight"].T + state["joint_net.3.bias"]
    np.testing.assert_allclose(run("joint", {"f": f, "g": g})["logits"], want, atol=1e-4)


def _io(model: onnx.ModelProto) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    def info(values: list[onnx.ValueInfoProto]) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in values]

    return info(list(model.graph.input)), info(list(model.graph.output))


def test_interface_and_full_widths() -> None:
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    rng = np.random.default_rng(0)
    state = {**M._lstm_weights(rng, M.PRE_RNN, 2, 240, 1024), **M._lstm_weights(rng, M.POST_RNN, 3, 2048, 1024)}
    state |= {M.EMBED: np.zeros((28, 320), np.float32), **M._lstm_weights(rng, M.PRED_RNN, 2, 320, 320)}
    state |= {"joint.net.0.weight": np.zeros((512, 1344)), "joint.net.0.bias": np.zeros(512)}
    state |= {"joint.net.3.weight": np.zeros((29, 512)), "joint.net.3.bias": np.zeros(29)}
    graphs = M.checkpoint_graphs(state, "SYNTHETIC test")
    assert _io(graphs["encoder"]) == (
        [("feature", f32), ("feature_length", i64)],
        [("encoded", f32), ("encoded_length", i64)],
    )
    assert _io(graphs["prediction"]) == (
        [("symbol", i64), ("hidden", f32), ("cell", f32)],
        [("g", f32), ("hidden_out", f32), ("cell_out", f32)],
    )
    assert _io(graphs["joint"]) == ([("f", f32), ("g", f32)], [("logits", f32)])
    weights = {part: {t.name: list(t.dims) for t in m.graph.initializer} for part, m in graphs.items()}
    lstm_w = [weights["encoder"][n.input[1]] for n in graphs["encoder"].graph.node if n.op_type == "LSTM"]
    # Two LSTM layers on 240 stacked features, time stacking by 2, three on 2048: the real widths.
    assert lstm_w == [[1, 4096, 240], [1, 4096, 1024], [1, 4096, 2048], [1, 4096, 1024], [1, 4096, 1024]]
    pred = weights["prediction"]
    assert [pred[n.input[1]] for n in graphs["prediction"].graph.node if n.op_type == "LSTM"] == [[1, 1280, 320]] * 2
    assert [v for k, v in pred.items() if k.startswith("embed")] == [[29, 320]]  # 28 labels and the start
    with pytest.raises(HarnessError, match=r"lacks prediction\.embed\.weight"):
        M.checkpoint_graphs({k: v for k, v in state.items() if k != M.EMBED})
    with pytest.raises(HarnessError, match="size 'huge' unknown"):
        M.synthetic_state(0, "huge")


def test_synthetic_model_is_deterministic_and_says_so(tmp_path: Path) -> None:
    a = M.build_model(tmp_path / "a", seed=5)
    M.build_graphs.cache_clear()  # built again, not remembered
    b = M.build_model(tmp_path / "b", seed=5)
    for part in M.PARTS:
        assert a[part].read_bytes() == b[part].read_bytes()
        assert "SYNTHETIC" in onnx.load(str(a[part])).doc_string
