"""The RNN-T of MLPerf v1.0 (configs/rnnt.toml [rnnt]) as three ONNX graphs.

The reference runs one PyTorch module in three parts, and its greedy decoder calls them separately;
the graphs here are those parts:

- ``encoder``: ``feature`` (B, T, 240) float32 and ``feature_length`` (B,) int64 -> ``encoded``
  (B, ceil(T/2), H) and ``encoded_length`` (B,) int64. The reference's SUT hands the features over
  time-major; the graph takes them batch first and transposes, so that every input and output of
  every part has the batch first, as the harness's backends (batch-size profiles, warm-up) expect.
  Two LSTM layers, time stacking by 2 (each frame joined with the next, zero past the end), three
  LSTM layers; H = 1024.
- ``prediction``: ``symbol`` (B, 1) int64, ``hidden`` and ``cell`` (B, 2, P) -> ``g`` (B, 1, P),
  ``hidden_out``, ``cell_out`` (B, 2, P): torch's (layers, B, P) state, batch first. Embedding of
  the 28 labels then two LSTM layers; P = 320. Index 28
  (the blank, never fed back) stands for the reference's start symbol: its embedding row is zero,
  which is what the reference's prediction net uses before the first label. A zero
  ``hidden``/``cell`` is the reference's initial state (None).
- ``joint``: ``f`` (B, H) and ``g`` (B, P) -> ``logits`` (B, 29): Linear(H+P, 512), ReLU, Linear(512, 29).

The graphs are built from a state dict in the reference checkpoint's names and torch's layout
(``checkpoint_graphs``): the real model converts through the same code as the SYNTHETIC one, whose
weights are random (``build_model``; ``size="small"`` narrows every width for CI on two cores).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ...backends.base import TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_bytes
from . import FILES, PARTS
from .features import FEATURES
from .synth import synthetic_waveform

NUM_LABELS = 28  # " ", a-z, "'"
NUM_CLASSES = NUM_LABELS + 1  # and the blank, last
SOS = NUM_LABELS  # the start symbol's index in the prediction graph (its embedding row is zero)
PRE_LAYERS, POST_LAYERS, PRED_LAYERS = 2, 3, 2
FORGET_GATE_BIAS = 1.0
SIZES = {"full": (1024, 320, 512), "small": (64, 64, 128)}  # (encoder, prediction, joint) widths
# The reference checkpoint's module names (after its SUT's migration of "joint_net" to "joint.net").
PRE_RNN, POST_RNN, PRED_RNN = "encoder.pre_rnn.lstm", "encoder.post_rnn.lstm", "prediction.dec_rnn.lstm"
EMBED, JOINT_1, JOINT_2 = "prediction.embed.weight", "joint.net.0", "joint.net.3"
# How the synthetic joint net behaves (see ``_fit_joint``).
LOGIT_SCALE = 3.0  # spread of the labels' logits: fp16 and int8 engines keep their ranking
HOLD_BACK = 8.0 * LOGIT_SCALE  # how far the labels just emitted fall
SPACE_SHARE = 0.1  # of the frames' leading labels
LABEL_RATE = 0.4  # labels per encoder frame (60 ms)

# Per-sample tensors the pipeline hands to ``collate`` (no batch dimension).
SAMPLE_SPECS = (TensorSpec("feature", (None, FEATURES), "float32"), TensorSpec("feature_length", (), "int64"))

Runner = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
State = Mapping[str, np.ndarray]


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, value: np.ndarray | int | list[int], prefix: str = "c") -> str:
        name = self.name(prefix)
        array = value if isinstance(value, np.ndarray) else np.array(value, dtype=np.int64)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs

    def lstm(
        self, x: str, state: State, prefix: str, layer: int, lengths: str = "", h0: str = "", c0: str = ""
    ) -> tuple[str, str, str]:
        """One layer of a torch.nn.LSTM as an ONNX LSTM: torch orders the gates i, f, g, o, ONNX i, o, f, c."""
        w_ih, w_hh = state[f"{prefix}.weight_ih_l{layer}"], state[f"{prefix}.weight_hh_l{layer}"]
        b = np.concatenate([state[f"{prefix}.bias_ih_l{layer}"], state[f"{prefix}.bias_hh_l{layer}"]])
        hidden = w_hh.shape[1]
        order = np.concatenate([np.arange(k * hidden, (k + 1) * hidden) for k in (0, 3, 1, 2)])
        order_b = np.concatenate([order, order + 4 * hidden])
        weights = [w_ih[order][None], w_hh[order][None], b[order_b][None]]
        inputs = [x, *(self.const(w.astype(np.float32), p) for w, p in zip(weights, "WRB", strict=True))]
        inputs += [lengths, h0, c0]
        while inputs[-1] == "":
            inputs.pop()
        y, y_h, y_c = self.node("LSTM", inputs, n_out=3, hidden_size=hidden)
        # Y is (T, num_directions=1, B, hidden): drop the direction axis.
        return self.node("Squeeze", [y, self.const([1], "axes")])[0], y_h, y_c


def _model(g: _Graph, name: str, doc: str, inputs: list[Any], outputs: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mlperf-operator")
    model.ir_version = 7  # opset 13's IR: older onnxruntimes refuse newer ones
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def _tensor(name: str, dtype: int, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def encoder_graph(state: State, doc: str) -> onnx.ModelProto:
    g = _Graph()
    lengths32 = g.node("Cast", ["feature_length"], to=TensorProto.INT32)[0]
    x = g.node("Transpose", ["feature"], perm=[1, 0, 2])[0]  # (T, B, 240), as the LSTMs take it
    for layer in range(PRE_LAYERS):
        x = g.lstm(x, state, PRE_RNN, layer, lengths32)[0]
    # Zero the outputs past each utterance's end, as a batch of one has nothing there: the stacking
    # below then joins an utterance's last frame with zeros, whatever the batch's padding.
    steps = g.node("Gather", [g.node("Shape", [x])[0], g.const(0)])[0]  # T, a scalar
    steps = g.node("Range", [g.const(0), steps, g.const(1)])[0]
    valid = g.node(
        "Less",
        [
            g.node("Unsqueeze", [steps, g.const([1], "axes")])[0],
            g.node("Unsqueeze", ["feature_length", g.const([0], "axes")])[0],
        ],
    )[0]  # (T, B)
    mask = g.node("Unsqueeze", [g.node("Cast", [valid], to=TensorProto.FLOAT)[0], g.const([2], "axes")])[0]
    x = g.node("Mul", [x, mask])[0]
    # Time stacking by 2 (StackTime): frame t joined with frame t+1 (zero past the end), every second kept.
    end = int(np.iinfo(np.int64).max)
    later = g.node("Slice", [x, g.const([1]), g.const([end]), g.const([0])])[0]
    later = g.node("Pad", [later, g.const([0, 0, 0, 1, 0, 0])])[0]
    stacked = g.node("Concat", [x, later], axis=2)[0]
    x = g.node("Slice", [stacked, g.const([0]), g.const([end]), g.const([0]), g.const([2])])[0]
    # ceil(length / 2), as StackTime computes it.
    out_len = g.node("Div", [g.node("Add", ["feature_length", g.const(1)])[0], g.const(2)])[0]
    g.nodes.append(helper.make_node("Identity", [out_len], ["encoded_length"]))
    out_len32 = g.node("Cast", [out_len], to=TensorProto.INT32)[0]
    for layer in range(POST_LAYERS):
        x = g.lstm(x, state, POST_RNN, layer, out_len32)[0]
    g.nodes.append(helper.make_node("Transpose", [x], ["encoded"], perm=[1, 0, 2]))
    width = state[f"{POST_RNN}.weight_hh_l0"].shape[1]
    return _model(
        g,
        "rnnt_encoder",
        doc,
        [
            _tensor("feature", TensorProto.FLOAT, ["B", "T", FEATURES]),
            _tensor("feature_length", TensorProto.INT64, ["B"]),
        ],
        [
            _tensor("encoded", TensorProto.FLOAT, ["B", "T2", width]),
            _tensor("encoded_length", TensorProto.INT64, ["B"]),
        ],
    )


def prediction_graph(state: State, doc: str) -> onnx.ModelProto:
    g = _Graph()
    embed = state[EMBED]
    width = embed.shape[1]
    table = np.concatenate([embed, np.zeros((1, width))]).astype(np.float32)  # row 28: the start symbol
    x = g.node("Gather", [g.const(table, "embed"), "symbol"])[0]  # (B, 1, P)
    x = g.node("Transpose", [x], perm=[1, 0, 2])[0]  # (1, B, P)
    hs, cs = [], []
    for layer in range(PRED_LAYERS):
        # This layer's slice of the (B, layers, P) state, as the LSTM's (1, B, P).
        start, stop, axis = g.const([layer]), g.const([layer + 1]), g.const([1])
        h0, c0 = (
            g.node("Transpose", [g.node("Slice", [name, start, stop, axis])[0]], perm=[1, 0, 2])[0]
            for name in ("hidden", "cell")
        )
        x, h, c = g.lstm(x, state, PRED_RNN, layer, "", h0, c0)
        hs.append(g.node("Transpose", [h], perm=[1, 0, 2])[0])
        cs.append(g.node("Transpose", [c], perm=[1, 0, 2])[0])
    g.nodes += [
        helper.make_node("Transpose", [x], ["g"], perm=[1, 0, 2]),
        helper.make_node("Concat", hs, ["hidden_out"], axis=1),
        helper.make_node("Concat", cs, ["cell_out"], axis=1),
    ]
    shape: list[str | int] = ["B", PRED_LAYERS, width]
    return _model(
        g,
        "rnnt_prediction",
        doc,
        [
            _tensor("symbol", TensorProto.INT64, ["B", 1]),
            _tensor("hidden", TensorProto.FLOAT, shape),
            _tensor("cell", TensorProto.FLOAT, shape),
        ],
        [
            _tensor("g", TensorProto.FLOAT, ["B", 1, width]),
            _tensor("hidden_out", TensorProto.FLOAT, shape),
            _tensor("cell_out", TensorProto.FLOAT, shape),
        ],
    )


def joint_graph(state: State, doc: str) -> onnx.ModelProto:
    g = _Graph()
    w1 = state[f"{JOINT_1}.weight"]  # (512, H + P), torch's (out, in): Gemm with transB
    enc = state[f"{POST_RNN}.weight_hh_l0"].shape[1]
    x = g.node("Concat", ["f", "g"], axis=1)[0]
    consts = [
        g.const(state[f"{layer}.{kind}"].astype(np.float32))
        for layer in (JOINT_1, JOINT_2)
        for kind in ("weight", "bias")
    ]
    x = g.node("Relu", [g.node("Gemm", [x, consts[0], consts[1]], transB=1)[0]])[0]
    g.nodes.append(helper.make_node("Gemm", [x, consts[2], consts[3]], ["logits"], transB=1))
    return _model(
        g,
        "rnnt_joint",
        doc,
        [_tensor("f", TensorProto.FLOAT, ["B", enc]), _tensor("g", TensorProto.FLOAT, ["B", w1.shape[1] - enc])],
        [_tensor("logits", TensorProto.FLOAT, ["B", NUM_CLASSES])],
    )


def checkpoint_graphs(
    state: State, doc: str = "RNN-T converted from the MLPerf checkpoint"
) -> dict[str, onnx.ModelProto]:
    """The three graphs from a state dict with the reference checkpoint's names (numpy arrays; the
    checkpoint's own "joint_net" names are accepted as its SUT migrates them)."""
    state = {k.replace("joint_net", "joint.net"): np.asarray(v) for k, v in state.items()}
    needed = [EMBED, f"{JOINT_1}.weight", f"{JOINT_2}.weight", f"{PRE_RNN}.weight_ih_l0", f"{POST_RNN}.weight_hh_l2"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise HarnessError(f"RNN-T state dict lacks {', '.join(missing)}; is it the MLPerf rnnt checkpoint?")
    return {
        "encoder": encoder_graph(state, doc),
        "prediction": prediction_graph(state, doc),
        "joint": joint_graph(state, doc),
    }


def _lstm_weights(
    rng: np.random.Generator, prefix: str, layers: int, width_in: int, hidden: int
) -> dict[str, np.ndarray]:
    """A torch.nn.LSTM's parameters: recurrent weights and biases as torch initialises them (uniform
    ±1/sqrt(hidden)), the forget gate's input bias at 1 and its recurrent one at 0 as the reference
    sets them. The input weights are scaled so the gates see unit-variance input (gain 1 on
    unit-variance inputs, 3 on another LSTM's outputs): with torch's own init five stacked random
    layers forget their input and every utterance encodes alike."""
    bound = 1.0 / np.sqrt(hidden)
    out = {}
    for layer in range(layers):
        n_in = width_in if layer == 0 else hidden
        gain = 1.0 if (layer == 0 and prefix != POST_RNN) else 3.0
        b_ih = rng.uniform(-bound, bound, 4 * hidden)
        b_hh = rng.uniform(-bound, bound, 4 * hidden)
        b_ih[hidden : 2 * hidden], b_hh[hidden : 2 * hidden] = FORGET_GATE_BIAS, 0.0
        out[f"{prefix}.weight_ih_l{layer}"] = rng.standard_normal((4 * hidden, n_in)) * (gain / np.sqrt(n_in))
        out[f"{prefix}.weight_hh_l{layer}"] = rng.uniform(-bound, bound, (4 * hidden, hidden))
        out[f"{prefix}.bias_ih_l{layer}"], out[f"{prefix}.bias_hh_l{layer}"] = b_ih, b_hh
    return {k: v.astype(np.float32) for k, v in out.items()}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _calibration(
    rng: np.random.Generator, encoder: onnx.ModelProto, prediction: onnx.ModelProto, pred_width: int
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Encoder frames of synthetic utterances; prediction outputs after random label sequences, with
    the labels each one read last and last but one (as 0/1 over the labels)."""
    from .features import filterbank_features  # the features of the audio the datasets hold

    enc = _session(encoder)
    utterances = []
    for seconds in (3.0, 4.0, 5.0, 6.0, 8.0):
        feat = filterbank_features(synthetic_waveform(rng, seconds).astype(np.float32) / 32768.0)
        out = enc.run(["encoded"], {"feature": feat[None], "feature_length": np.array([len(feat)], np.int64)})[0]
        utterances.append(out[0])
    pred = _session(prediction)
    batch = 256
    h = c = np.zeros((batch, PRED_LAYERS, pred_width), np.float32)
    g, h, c = pred.run(None, {"symbol": np.full((batch, 1), SOS, np.int64), "hidden": h, "cell": c})
    gs, recent = [], []
    previous = np.zeros((batch, NUM_LABELS))
    for _ in range(6):
        sym = rng.integers(0, NUM_LABELS, batch)
        g, h, c = pred.run(None, {"symbol": sym[:, None].astype(np.int64), "hidden": h, "cell": c})
        current = np.eye(NUM_LABELS)[sym]
        gs.append(g[:, 0])
        recent.append(np.maximum(current, previous))
        previous = current
    return utterances, np.concatenate(gs), np.concatenate(recent)


def _labels_per_frame(prediction: onnx.ModelProto, utterances: list[np.ndarray], joint: dict[str, np.ndarray]) -> float:
    """Labels per encoder frame that greedy decoding of ``utterances`` gives with these joint weights."""
    from .decoder import greedy_decode

    w1, b1 = joint[f"{JOINT_1}.weight"], joint[f"{JOINT_1}.bias"]
    w2, b2 = joint[f"{JOINT_2}.weight"], joint[f"{JOINT_2}.bias"]
    pred = _session(prediction)

    def run(part: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if part == "joint":
            z = np.concatenate([tensors["f"], tensors["g"]], axis=1)
            return {"logits": np.maximum(z @ w1.T + b1, 0.0) @ w2.T + b2}
        return dict(zip(["g", "hidden_out", "cell_out"], pred.run(None, tensors), strict=True))

    emitted = frames = 0
    for enc in utterances:
        emitted += len(greedy_decode(run, enc[None], np.array([len(enc)]), pred_width=w1.shape[1] - enc.shape[1])[0])
        frames += len(enc)
    return emitted / frames


def _fit_joint(
    rng: np.random.Generator, encoder: onnx.ModelProto, prediction: onnx.ModelProto, widths: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """Joint weights that behave like a trained net's: encoder frames vote for labels through random
    projections, and the prediction output holds back the last two labels emitted, so that a frame's
    label comes once and the blank follows (a random joint instead repeats labels up to 30 times a
    frame, or never leaves the blank). Every label leads equally often, the space in SPACE_SHARE of
    frames; the blank's bias gives LABEL_RATE labels per encoder frame."""
    enc_w, pred_w, joint_w = widths
    utterances, gs, recent = _calibration(rng, encoder, prediction, pred_w)
    # Units reading the prediction output: a least-squares read-out of the last two labels, carried
    # through the ReLU as relu(x) - relu(-x). Two, not one: one leaves two-label cycles.
    readout = np.linalg.lstsq(np.concatenate([gs, np.ones((len(gs), 1))], axis=1), recent, rcond=None)[0]
    # Units reading the encoder frame: random projections of the standardised frame.
    f = np.concatenate(utterances)
    units = joint_w - 2 * NUM_LABELS
    mean, std = f.mean(axis=0), f.std(axis=0) + 1e-6
    w1f = rng.standard_normal((enc_w, units)) * np.sqrt(2.0 / enc_w) / std[:, None]
    b1f = -mean @ w1f
    votes = rng.standard_normal((units, NUM_LABELS))
    raw = np.maximum(f @ w1f + b1f, 0.0) @ votes
    spread = LOGIT_SCALE / (raw.std(axis=0) + 1e-9)
    votes *= spread
    vote_bias = -raw.mean(axis=0) * spread
    scores = raw * spread + vote_bias
    vote_bias[0] += float(np.quantile(scores[:, 1:].max(axis=1) - scores[:, 0], 1.0 - SPACE_SHARE))
    w1 = np.zeros((enc_w + pred_w, joint_w))
    w1[:enc_w, :units] = w1f
    w1[enc_w:, units : units + NUM_LABELS] = readout[:-1]
    w1[enc_w:, units + NUM_LABELS :] = -readout[:-1]
    w2 = np.zeros((joint_w, NUM_CLASSES))
    w2[:units, :NUM_LABELS] = votes
    w2[units : units + NUM_LABELS, :NUM_LABELS] = -HOLD_BACK * np.eye(NUM_LABELS)
    w2[units + NUM_LABELS :, :NUM_LABELS] = HOLD_BACK * np.eye(NUM_LABELS)
    joint = {
        f"{JOINT_1}.weight": w1.T.astype(np.float32),
        f"{JOINT_1}.bias": np.concatenate([b1f, readout[-1], -readout[-1]]).astype(np.float32),
        f"{JOINT_2}.weight": w2.T.astype(np.float32),
        f"{JOINT_2}.bias": np.concatenate([vote_bias, [0.0]]).astype(np.float32),
    }
    # The blank's bias by bisection on the decode itself.
    low, high = -4.0 * LOGIT_SCALE, 8.0 * LOGIT_SCALE
    for _ in range(12):
        joint[f"{JOINT_2}.bias"][-1] = (low + high) / 2
        if _labels_per_frame(prediction, utterances, joint) > LABEL_RATE:
            low = (low + high) / 2
        else:
            high = (low + high) / 2
    joint[f"{JOINT_2}.bias"][-1] = (low + high) / 2
    return joint


def synthetic_state(seed: int, size: str = "small") -> dict[str, np.ndarray]:
    """A state dict of the reference's names and shapes (embedding 28 x P), weights random for ``seed``."""
    if size not in SIZES:
        raise HarnessError(f"rnnt model size {size!r} unknown; use one of {', '.join(SIZES)}")
    enc_w, pred_w, joint_w = SIZES[size]
    rng = np.random.default_rng(seed)
    state = {
        **_lstm_weights(rng, PRE_RNN, PRE_LAYERS, FEATURES, enc_w),
        **_lstm_weights(rng, POST_RNN, POST_LAYERS, 2 * enc_w, enc_w),
        EMBED: rng.standard_normal((NUM_LABELS, pred_w)).astype(np.float32),  # torch.nn.Embedding's N(0, 1)
        **_lstm_weights(rng, PRED_RNN, PRED_LAYERS, pred_w, pred_w),
    }
    doc = f"SYNTHETIC: random-weight RNN-T ({size}), not a trained model"
    state.update(_fit_joint(rng, encoder_graph(state, doc), prediction_graph(state, doc), (enc_w, pred_w, joint_w)))
    return state


@lru_cache(maxsize=2)  # download-model and download-data build the same model in one process
def build_graphs(seed: int, size: str = "small") -> dict[str, onnx.ModelProto]:
    return checkpoint_graphs(
        synthetic_state(seed, size), f"SYNTHETIC: random-weight RNN-T ({size}), not a trained model"
    )


def write_graphs(graphs: dict[str, onnx.ModelProto], out_dir: Path) -> dict[str, Path]:
    paths = {}
    for part, model in graphs.items():
        paths[part] = out_dir / FILES[part]
        atomic_write_bytes(paths[part], model.SerializeToString())
    return paths


def build_model(out_dir: Path, seed: int, size: str = "small") -> dict[str, Path]:
    """Write the three SYNTHETIC graphs into ``out_dir`` (rnnt_encoder.onnx, rnnt_prediction.onnx,
    rnnt_joint.onnx); return their paths by part."""
    return write_graphs(build_graphs(seed, size), out_dir)


def onnx_runner(model_dir: Path, providers: list[str] | None = None, threads: int = 0) -> Runner:
    """``run(part, tensors) -> outputs by name`` over the three graphs in ``model_dir``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {}
    for part in PARTS:
        path = model_dir / FILES[part]
        if not path.is_file():
            raise HarnessError(f"{path}: missing RNN-T {part} graph; run download-model (or build the synthetic model)")
        try:
            sessions[part] = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for truncated or invalid files
            raise HarnessError(f"{path}: not a valid ONNX graph ({exc.__class__.__name__}); download it again") from exc
    names = {part: [o.name for o in s.get_outputs()] for part, s in sessions.items()}

    def run(part: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names[part], sessions[part].run(names[part], tensors), strict=True))

    return run
