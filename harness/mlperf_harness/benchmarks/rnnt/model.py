"""The RNN-T of MLPerf v1.0 (configs/rnnt.toml [rnnt]) as three ONNX graphs with random weights.

The reference runs one PyTorch module in three parts, and its greedy decoder calls them separately;
the graphs here are those parts:

- ``encoder``: ``feature`` (T, B, 240) float32 time-major, as the reference's SUT hands it over, and
  ``feature_length`` (B,) int64 -> ``encoded`` (B, ceil(T/2), H) and ``encoded_length`` (B,) int64.
  Two LSTM layers, time stacking by 2 (each frame joined with the next, zero past the end), three
  LSTM layers; H = 1024.
- ``prediction``: ``symbol`` (B, 1) int64, ``hidden`` and ``cell`` (2, B, P) -> ``g`` (B, 1, P),
  ``hidden_out``, ``cell_out``. Embedding of the 28 labels then two LSTM layers; P = 320. Index 28
  (the blank, never fed back) stands for the reference's start symbol: its embedding row is zero,
  which is what the reference's prediction net uses before the first label.
- ``joint``: ``f`` (B, H) and ``g`` (B, P) -> ``logits`` (B, 29): Linear(H+P, 512), ReLU, Linear(512, 29).

A zero ``hidden``/``cell`` is the reference's initial state (None). ``size="small"`` keeps the graph
and narrows every width to 64 for CI on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ...backends.base import TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_bytes
from .features import FEATURES
from .synth import synthetic_waveform

NUM_LABELS = 28  # " ", a-z, "'"
NUM_CLASSES = NUM_LABELS + 1  # and the blank, last
SOS = NUM_LABELS  # the start symbol's index in the prediction graph (its embedding row is zero)
PRE_LAYERS, POST_LAYERS, PRED_LAYERS, STACK_TIME = 2, 3, 2, 2
FORGET_GATE_BIAS = 1.0
SIZES = {"full": (1024, 320, 512), "small": (64, 64, 128)}  # (encoder, prediction, joint) widths
PARTS = ("encoder", "prediction", "joint")
LOGIT_SCALE = 3.0  # spread of the labels' logits: fp16 and int8 engines keep their ranking
HOLD_BACK = 8.0 * LOGIT_SCALE  # how far the label just emitted falls
SPACE_SHARE = 0.1
LABEL_RATE = 0.4  # labels per encoder frame (60 ms) the synthetic model is tuned to emit
FILES = {part: f"rnnt_{part}.onnx" for part in PARTS}

# Per-sample tensors the pipeline hands to ``collate`` (no batch dimension).
SAMPLE_SPECS = (TensorSpec("feature", (None, FEATURES), "float32"), TensorSpec("feature_length", (), "int64"))

Runner = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


class _Graph:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str | None = None, n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.name(prefix or op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs

    def lstm(
        self, x: str, width_in: int, hidden: int, lengths: str = "", h0: str = "", c0: str = "", gain: float = 3.0
    ) -> tuple[str, str, str]:
        """One unidirectional LSTM layer; ONNX orders the gates i, o, f, c. Recurrent weights and biases
        as torch.nn.LSTM initialises them (uniform ±1/sqrt(hidden)), the forget gate's input bias at 1
        as the reference sets it. The input weights are scaled so that the gates see unit-variance
        input (``gain`` 1 for unit-variance inputs, 3 for another LSTM's outputs): with torch's own
        init five stacked random layers forget their input and every utterance encodes alike."""
        bound = 1.0 / np.sqrt(hidden)
        w = (self.rng.standard_normal((1, 4 * hidden, width_in)) * (gain / np.sqrt(width_in))).astype(np.float32)
        r = self.rng.uniform(-bound, bound, (1, 4 * hidden, hidden)).astype(np.float32)
        b = self.rng.uniform(-bound, bound, (1, 8 * hidden)).astype(np.float32)
        b[0, 2 * hidden : 3 * hidden] = FORGET_GATE_BIAS
        b[0, 6 * hidden : 7 * hidden] = 0.0
        inputs = [x, self.const(w, "W"), self.const(r, "R"), self.const(b, "B"), lengths, h0, c0]
        while inputs[-1] == "":
            inputs.pop()
        y, y_h, y_c = self.node("LSTM", inputs, "lstm", n_out=3, hidden_size=hidden)
        # Y is (T, num_directions=1, B, hidden): drop the direction axis.
        (seq,) = self.node("Squeeze", [y, self.const(np.array([1], dtype=np.int64), "axes")])
        return seq, y_h, y_c


def _model(
    g: _Graph, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mlperf-operator")
    model.ir_version = 7  # opset 13's IR: older onnxruntimes refuse newer ones
    model.doc_string = f"SYNTHETIC: random-weight RNN-T {name}, not a trained model"
    onnx.checker.check_model(model)
    return model


def _encoder(rng: np.random.Generator, width: int) -> onnx.ModelProto:
    g = _Graph(rng)
    lengths32 = g.node("Cast", ["feature_length"], to=TensorProto.INT32)[0]
    x, w_in = "feature", FEATURES
    for layer in range(PRE_LAYERS):
        x, _, _ = g.lstm(x, w_in, width, lengths32, gain=1.0 if layer == 0 else 3.0)
        w_in = width
    # Zero the outputs past each utterance's end, as a batch of one has nothing there: the stacking
    # below then joins an utterance's last frame with zeros, whatever the batch's padding.
    steps = g.node("Shape", [x])[0]
    steps = g.node("Gather", [steps, g.const(np.array(0, np.int64))])[0]  # T, a scalar
    steps = g.node("Range", [g.const(np.array(0, np.int64)), steps, g.const(np.array(1, np.int64))])[0]
    valid = g.node(
        "Less",
        [
            g.node("Unsqueeze", [steps, g.const(np.array([1], dtype=np.int64), "axes")])[0],
            g.node("Unsqueeze", ["feature_length", g.const(np.array([0], dtype=np.int64), "axes")])[0],
        ],
    )[0]  # (T, B)
    mask = g.node(
        "Unsqueeze", [g.node("Cast", [valid], to=TensorProto.FLOAT)[0], g.const(np.array([2], np.int64), "axes")]
    )[0]
    x = g.node("Mul", [x, mask])[0]
    # Time stacking: frame t joined with frame t+1 (zero past the end), every second one kept.
    big = np.iinfo(np.int64).max
    later = g.node(
        "Slice",
        [x, g.const(np.array([1], np.int64)), g.const(np.array([big], np.int64)), g.const(np.array([0], np.int64))],
    )[0]
    later = g.node("Pad", [later, g.const(np.array([0, 0, 0, 1, 0, 0], np.int64))])[0]
    stacked = g.node("Concat", [x, later], axis=2)[0]
    x = g.node(
        "Slice",
        [
            stacked,
            g.const(np.array([0], np.int64)),
            g.const(np.array([big], np.int64)),
            g.const(np.array([0], np.int64)),
            g.const(np.array([STACK_TIME], np.int64)),
        ],
    )[0]
    # ceil(length / 2), as the reference's StackTime computes it.
    out_len = g.node(
        "Div", [g.node("Add", ["feature_length", g.const(np.array(1, np.int64))])[0], g.const(np.array(2, np.int64))]
    )[0]
    g.nodes.append(helper.make_node("Identity", [out_len], ["encoded_length"]))
    out_len32 = g.node("Cast", [out_len], to=TensorProto.INT32)[0]
    w_in = STACK_TIME * width
    for _ in range(POST_LAYERS):
        x, _, _ = g.lstm(x, w_in, width, out_len32)
        w_in = width
    g.nodes.append(helper.make_node("Transpose", [x], ["encoded"], perm=[1, 0, 2]))
    return _model(
        g,
        "rnnt_encoder",
        [
            helper.make_tensor_value_info("feature", TensorProto.FLOAT, ["T", "B", FEATURES]),
            helper.make_tensor_value_info("feature_length", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["B", "T2", width]),
            helper.make_tensor_value_info("encoded_length", TensorProto.INT64, ["B"]),
        ],
    )


def _prediction(rng: np.random.Generator, width: int) -> onnx.ModelProto:
    g = _Graph(rng)
    embed = rng.standard_normal((NUM_CLASSES, width)).astype(np.float32)  # torch.nn.Embedding's N(0, 1)
    embed[SOS] = 0.0
    x = g.node("Gather", [g.const(embed, "embed"), "symbol"])[0]  # (B, 1, P)
    x = g.node("Transpose", [x], perm=[1, 0, 2])[0]  # (1, B, P)
    hs, cs = [], []
    for layer in range(PRED_LAYERS):
        # This layer's slice of the (layers, B, P) state.
        start, end, axis = (g.const(np.array([v], np.int64)) for v in (layer, layer + 1, 0))
        h0 = g.node("Slice", ["hidden", start, end, axis])[0]
        c0 = g.node("Slice", ["cell", start, end, axis])[0]
        x, h, c = g.lstm(x, width, width, "", h0, c0, gain=1.0 if layer == 0 else 3.0)
        hs.append(h)
        cs.append(c)
    g.nodes += [
        helper.make_node("Transpose", [x], ["g"], perm=[1, 0, 2]),
        helper.make_node("Concat", hs, ["hidden_out"], axis=0),
        helper.make_node("Concat", cs, ["cell_out"], axis=0),
    ]
    state: list[str | int] = ["L", "B", width]
    return _model(
        g,
        "rnnt_prediction",
        [
            helper.make_tensor_value_info("symbol", TensorProto.INT64, ["B", 1]),
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("cell", TensorProto.FLOAT, state),
        ],
        [
            helper.make_tensor_value_info("g", TensorProto.FLOAT, ["B", 1, width]),
            helper.make_tensor_value_info("hidden_out", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("cell_out", TensorProto.FLOAT, state),
        ],
    )


def _joint(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, enc: int, pred: int) -> onnx.ModelProto:
    g = _Graph(np.random.default_rng(0))
    x = g.node("Concat", ["f", "g"], axis=1)[0]
    x = g.node("Relu", [g.node("Gemm", [x, g.const(w1, "W1"), g.const(b1, "B1")])[0]])[0]
    g.nodes.append(helper.make_node("Gemm", [x, g.const(w2, "W2"), g.const(b2, "B2")], ["logits"]))
    return _model(
        g,
        "rnnt_joint",
        [
            helper.make_tensor_value_info("f", TensorProto.FLOAT, ["B", enc]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, ["B", pred]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", NUM_CLASSES])],
    )


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
        out = enc.run(["encoded"], {"feature": feat[:, None, :], "feature_length": np.array([len(feat)], np.int64)})[0]
        utterances.append(out[0])
    pred = _session(prediction)
    batch = 256
    h = c = np.zeros((PRED_LAYERS, batch, pred_width), np.float32)
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


def _labels_per_frame(prediction: onnx.ModelProto, utterances: list[np.ndarray], joint: list[np.ndarray]) -> float:
    """Labels per encoder frame that greedy decoding of ``utterances`` gives with these joint weights."""
    from .decoder import greedy_decode

    w1, b1, w2, b2 = joint
    pred = _session(prediction)

    def run(part: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if part == "joint":
            z = np.concatenate([tensors["f"], tensors["g"]], axis=1)
            return {"logits": np.maximum(z @ w1 + b1, 0.0) @ w2 + b2}
        return dict(zip(["g", "hidden_out", "cell_out"], pred.run(None, tensors), strict=True))

    emitted = frames = 0
    for enc in utterances:
        emitted += len(greedy_decode(run, enc[None], np.array([len(enc)]), pred_width=w1.shape[0] - enc.shape[1])[0])
        frames += len(enc)
    return emitted / frames


def build_graphs(seed: int, size: str = "small") -> dict[str, onnx.ModelProto]:
    """The three graphs for ``seed``, the joint net set up to behave like a trained one's: random
    encoder frames vote for labels, and the prediction output holds back the label just emitted, so
    a frame's label comes once and the blank follows (a random joint instead repeats one label up to
    30 times a frame, or never leaves the blank). Every label is used, spaces about one in six, at
    LABEL_RATE labels per encoder frame."""
    if size not in SIZES:
        raise HarnessError(f"rnnt model size {size!r} unknown; use one of {', '.join(SIZES)}")
    enc_w, pred_w, joint_w = SIZES[size]
    rng = np.random.default_rng(seed)
    encoder = _encoder(rng, enc_w)
    prediction = _prediction(rng, pred_w)
    utterances, gs, recent = _calibration(rng, encoder, prediction, pred_w)
    # Units reading the prediction output: a linear read-out of the last two labels (least squares),
    # carried through the ReLU as relu(x) - relu(-x). Holding back two, not one, breaks the
    # two-label cycles a frame would otherwise repeat.
    readout = np.linalg.lstsq(np.concatenate([gs, np.ones((len(gs), 1))], axis=1), recent, rcond=None)[0]
    # Units reading the encoder frame: random projections of the standardised frame.
    f = np.concatenate(utterances)
    units = joint_w - 2 * NUM_LABELS
    mean, std = f.mean(axis=0), f.std(axis=0) + 1e-6
    w1f = rng.standard_normal((enc_w, units)) * np.sqrt(2.0 / enc_w) / std[:, None]
    b1f = -mean @ w1f
    votes = rng.standard_normal((units, NUM_LABELS))
    raw = np.maximum(f @ w1f + b1f, 0.0) @ votes
    spread = LOGIT_SCALE / (raw.std(axis=0) + 1e-9)  # every label equally likely to lead
    votes *= spread
    vote_bias = -raw.mean(axis=0) * spread
    scores = raw * spread + vote_bias
    vote_bias[0] += float(np.quantile(scores[:, 1:].max(axis=1) - scores[:, 0], 1.0 - SPACE_SHARE))
    w1 = np.zeros((enc_w + pred_w, joint_w))
    w1[:enc_w, :units] = w1f
    w1[enc_w:, units : units + NUM_LABELS] = readout[:-1]
    w1[enc_w:, units + NUM_LABELS :] = -readout[:-1]
    b1 = np.concatenate([b1f, readout[-1], -readout[-1]])
    w2 = np.zeros((joint_w, NUM_CLASSES))
    w2[:units, :NUM_LABELS] = votes
    w2[units : units + NUM_LABELS, :NUM_LABELS] = -HOLD_BACK * np.eye(NUM_LABELS)
    w2[units + NUM_LABELS :, :NUM_LABELS] = HOLD_BACK * np.eye(NUM_LABELS)
    b2 = np.concatenate([vote_bias, [0.0]])
    # The blank's bias by bisection on the decode itself.
    joint = [w1.astype(np.float32), b1.astype(np.float32), w2.astype(np.float32), b2.astype(np.float32)]
    low, high = -4.0 * LOGIT_SCALE, 8.0 * LOGIT_SCALE
    for _ in range(12):
        joint[3][-1] = np.float32((low + high) / 2)
        if _labels_per_frame(prediction, utterances, joint) > LABEL_RATE:
            low = (low + high) / 2
        else:
            high = (low + high) / 2
    joint[3][-1] = np.float32((low + high) / 2)
    return {
        "encoder": encoder,
        "prediction": prediction,
        "joint": _joint(joint[0], joint[1], joint[2], joint[3], enc_w, pred_w),
    }


def build_model(out_dir: Path, seed: int, size: str = "small") -> dict[str, Path]:
    """Write the three SYNTHETIC graphs into ``out_dir`` (rnnt_encoder.onnx, rnnt_prediction.onnx,
    rnnt_joint.onnx); return their paths by part."""
    paths = {}
    for part, model in build_graphs(seed, size).items():
        paths[part] = out_dir / FILES[part]
        atomic_write_bytes(paths[part], model.SerializeToString())
    return paths


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
