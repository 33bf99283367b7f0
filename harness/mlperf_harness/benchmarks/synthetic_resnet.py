"""A ResNet-50 v1.5 ONNX graph of the real architecture with random weights (fixed seed).

Same interface as MLPerf's resnet50_v1.onnx: input ``input_tensor:0`` (N, 3, 224, 224) float32,
outputs ``ArgMax:0`` (N,) int64 and ``softmax_tensor:0`` (N, 1001), class 0 being background.
BatchNorm is folded into the convolutions' bias, as an inference graph has it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "input_tensor:0"
ARGMAX = "ArgMax:0"
SOFTMAX = "softmax_tensor:0"
CLASSES = 1001
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)


class _Graph:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, relu: bool, gain: float = 1.0) -> str:
        # He initialisation keeps activations in range through 50 layers of random weights.
        std = gain * np.sqrt(2.0 / (cin * k * k))
        w = (self.rng.standard_normal((cout, cin, k, k), dtype=np.float32) * std).astype(np.float32)
        b = (self.rng.standard_normal(cout, dtype=np.float32) * 0.05).astype(np.float32)
        wn, bn, out = self.name("W"), self.name("B"), self.name("conv")
        self.inits += [numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)]
        pad = k // 2
        self.nodes.append(
            helper.make_node("Conv", [x, wn, bn], [out], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        )
        if not relu:
            return out
        act = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [out], [act]))
        return act

    def bottleneck(self, x: str, cin: int, width: int, stride: int) -> tuple[str, int]:
        cout = width * 4
        y = self.conv(x, cin, width, 1, 1, True)
        y = self.conv(y, width, width, 3, stride, True)  # v1.5: the stride sits on the 3x3
        y = self.conv(y, width, cout, 1, 1, False, gain=0.3)
        short = x if (stride == 1 and cin == cout) else self.conv(x, cin, cout, 1, stride, False)
        s, r = self.name("add"), self.name("relu")
        self.nodes += [helper.make_node("Add", [y, short], [s]), helper.make_node("Relu", [s], [r])]
        return r, cout


def _backbone(rng: np.random.Generator) -> tuple[_Graph, str]:
    g = _Graph(rng)
    x = g.conv(INPUT, 3, 64, 7, 2, True, gain=1.0 / 60.0)  # inputs are mean-subtracted pixels (~±128)
    pooled = g.name("pool")
    g.nodes.append(helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, c = pooled, 64
    for width, blocks, stride in STAGES:
        for i in range(blocks):
            x, c = g.bottleneck(x, c, width, stride if i == 0 else 1)
    feat = "features"
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], [g.name("gap")]))
    g.nodes.append(helper.make_node("Flatten", [g.nodes[-1].output[0]], [feat], axis=1))
    return g, feat


def _model(g: _Graph, outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        "resnet50_v1_synthetic",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, 224, 224])],
        outputs,
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mlperf-operator")
    # Opset 13's IR version, not the newest onnx's default: older onnxruntimes refuse newer IRs.
    model.ir_version = 7
    model.doc_string = "SYNTHETIC: random-weight ResNet-50 v1.5, not a trained model"
    return model


def build(seed: int, calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """The model for ``seed``. With ``calibration`` images, the classifier is centred on their mean
    feature so that different images land in different classes (random weights otherwise send
    almost every image to one class)."""
    rng = np.random.default_rng(seed)
    g, feat = _backbone(rng)
    w = (rng.standard_normal((2048, CLASSES), dtype=np.float32) * np.sqrt(1.0 / 2048)).astype(np.float32)
    bias = np.zeros(CLASSES, dtype=np.float32)
    if calibration is not None:
        # Centre on the mean feature and scale to logits of a few units: different classes for
        # different images, and magnitudes that fp16 and int8 engines represent without overflow.
        feats = run_features(g, feat, calibration)
        mean = feats.mean(axis=0)
        w = (w * (4.0 / float(((feats - mean) @ w).std() + 1e-6))).astype(np.float32)
        bias = (-mean @ w).astype(np.float32)
    bias[0] = -1e4  # class 0 is background in resnet50_v1.onnx: never predicted
    g.inits += [numpy_helper.from_array(w, "fc_W"), numpy_helper.from_array(bias, "fc_B")]
    g.nodes += [
        helper.make_node("Gemm", [feat, "fc_W", "fc_B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [SOFTMAX], axis=1),
        helper.make_node("ArgMax", [SOFTMAX], [ARGMAX], axis=1, keepdims=0),
    ]
    return _model(
        g,
        [
            helper.make_tensor_value_info(ARGMAX, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(SOFTMAX, TensorProto.FLOAT, ["N", CLASSES]),
        ],
    )


def run_features(g: _Graph, feat: str, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    model = _model(g, [helper.make_tensor_value_info(feat, TensorProto.FLOAT, ["N", 2048])])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([feat], {INPUT: images})[0])


def calibration_images(seed: int, n: int = 8) -> np.ndarray:
    """Smooth random 'images', mean-subtracted like the real preprocessing, for centring only."""
    from .resnet50 import preprocess_image
    from .synthetic_imagenet import synthetic_image

    return np.stack([preprocess_image(synthetic_image(seed ^ 0x5EED, i)) for i in range(n)])


def write(path: Path, seed: int) -> Path:
    model = build(seed, calibration_images(seed))
    onnx.save(model, str(path))
    return path
