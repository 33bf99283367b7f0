"""The KiTS19 3D U-Net of the real architecture with random weights (fixed seed), as ONNX.

The architecture is MLPerf's (the training benchmark's model, which the inference reference
loads): an input block and four downsampling blocks (32, 64, 128, 256, 320 channels), a strided
bottleneck, five upsampling blocks (a 2x2x2 transposed convolution, concatenation with the
skip, two convolutions) and a 1x1x1 output convolution to 3 classes. Every 3x3x3 convolution is
followed by an affine instance norm and a ReLU and has no bias. The interface is that of
``3dunet_kits19_128x128x128_dynbatch.onnx``: ``input`` (N, 1, 128, 128, 128) float32 ->
``output`` (N, 3, 128, 128, 128) float32 logits, opset 12.

``size="small"`` is the same graph with narrow channels and 32^3 patches, for CI on two cores.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import HarnessError
from ...fsutil import temp_path_for

INPUT = "input"
OUTPUT = "output"
CLASSES = 3
OPSET = 12
FILTERS = {"full": (32, 64, 128, 256, 320), "small": (4, 8, 8, 16, 16)}
PATCH = {"full": 128, "small": 32}
# Share of voxels the calibrated output bias gives kidney and tumour (the rest is background),
# so that the FP32 model's own segmentations have all three classes.
CLASS_SHARE = (0.25, 0.12)


class _Graph:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_block(self, x: str, cin: int, cout: int, stride: int = 1) -> str:
        """3x3x3 convolution (no bias), affine instance norm, ReLU."""
        w = self.rng.standard_normal((cout, cin, 3, 3, 3), dtype=np.float32) * np.sqrt(2.0 / (cin * 27))
        conv = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv", [x, self.const("W", w)], [conv], kernel_shape=[3, 3, 3], strides=[stride] * 3, pads=[1] * 6
            )
        )
        scale = 1.0 + 0.1 * self.rng.standard_normal(cout, dtype=np.float32)
        bias = 0.1 * self.rng.standard_normal(cout, dtype=np.float32)
        norm, act = self.name("instnorm"), self.name("relu")
        self.nodes.append(
            helper.make_node(
                "InstanceNormalization",
                [conv, self.const("gamma", scale), self.const("beta", bias)],
                [norm],
                epsilon=1e-5,
            )
        )
        self.nodes.append(helper.make_node("Relu", [norm], [act]))
        return act

    def upsample(self, x: str, skip: str, cin: int, cout: int) -> str:
        w = self.rng.standard_normal((cin, cout, 2, 2, 2), dtype=np.float32) * np.sqrt(1.0 / (cin * 8))
        b = 0.05 * self.rng.standard_normal(cout, dtype=np.float32)
        up, cat = self.name("convtranspose"), self.name("concat")
        self.nodes.append(
            helper.make_node(
                "ConvTranspose",
                [x, self.const("W", w), self.const("B", b)],
                [up],
                kernel_shape=[2, 2, 2],
                strides=[2, 2, 2],
            )
        )
        self.nodes.append(helper.make_node("Concat", [up, skip], [cat], axis=1))
        y = self.conv_block(cat, 2 * cout, cout)
        return self.conv_block(y, cout, cout)


def _body(rng: np.random.Generator, filters: Sequence[int]) -> tuple[_Graph, str]:
    """Everything up to the last feature map (filters[0] channels at full resolution)."""
    g = _Graph(rng)
    x = g.conv_block(INPUT, 1, filters[0])
    x = g.conv_block(x, filters[0], filters[0])
    skips = [x]
    for cin, cout in itertools.pairwise(filters):
        x = g.conv_block(g.conv_block(x, cin, cout, stride=2), cout, cout)
        skips.append(x)
    x = g.conv_block(g.conv_block(x, filters[-1], filters[-1], stride=2), filters[-1], filters[-1])  # bottleneck
    ups = [(filters[-1], filters[-1]), *zip(reversed(filters[1:]), reversed(filters[:-1]), strict=True)]
    for (cin, cout), skip in zip(ups, reversed(skips), strict=True):
        x = g.upsample(x, skip, cin, cout)
    return g, x


def _model(g: _Graph, output: str, channels: int, patch: int) -> onnx.ModelProto:
    shape: list[int | str] = ["batch_size", 1, patch, patch, patch]
    graph = helper.make_graph(
        g.nodes,
        "3dunet_kits19_synthetic",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch_size", channels, patch, patch, patch])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlperf-operator")
    model.ir_version = 7  # opset 12's IR: older onnxruntimes refuse newer ones
    model.doc_string = "SYNTHETIC: random-weight KiTS19 3D U-Net, not a trained model"
    return model


def build(seed: int, size: str = "small", calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """The model for ``seed``. With ``calibration`` patches (N, 1, P, P, P) of preprocessed CT,
    the output bias is set so that kidney and tumour win on about CLASS_SHARE of the voxels
    (random weights otherwise give one class almost everywhere or a salt-and-pepper mix)."""
    if size not in FILTERS:
        raise HarnessError(f"3d-unet model size {size!r}: use 'small' or 'full'")
    filters, patch = FILTERS[size], PATCH[size]
    rng = np.random.default_rng(seed)
    g, feat = _body(rng, filters)
    w = rng.standard_normal((CLASSES, filters[0], 1, 1, 1), dtype=np.float32) * np.sqrt(1.0 / filters[0])
    bias = np.zeros(CLASSES, dtype=np.float32)
    if calibration is not None:
        bias = _calibrated_bias(_features(g, feat, filters[0], patch, calibration), w.reshape(CLASSES, -1))
    g.nodes.append(
        helper.make_node("Conv", [feat, g.const("W", w), g.const("B", bias)], [OUTPUT], kernel_shape=[1, 1, 1])
    )
    return _model(g, OUTPUT, CLASSES, patch)


def _features(g: _Graph, feat: str, channels: int, patch: int, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    model = _model(g, feat, channels, patch)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([feat], {INPUT: x.astype(np.float32)})[0])


def _calibrated_bias(feats: np.ndarray, w: np.ndarray) -> np.ndarray:
    logits = np.einsum("kc,ncdhw->kndhw", w, feats).reshape(CLASSES, -1)
    bias = np.zeros(CLASSES, dtype=np.float64)
    # Kidney beats background on CLASS_SHARE[0] of the voxels; then tumour beats both on CLASS_SHARE[1].
    bias[1] = -np.quantile(logits[1] - logits[0], 1.0 - CLASS_SHARE[0])
    best = np.maximum(logits[0], logits[1] + bias[1])
    bias[2] = -np.quantile(logits[2] - best, 1.0 - CLASS_SHARE[1])
    return bias.astype(np.float32)


def patch_size(model_path: Path) -> int:
    """The cubic patch edge a 3D U-Net ONNX file takes (128 for the official model)."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise HarnessError(f"{model_path}: not a readable ONNX model ({str(exc).splitlines()[0][:120]})") from None
    inputs = {i.name: i for i in model.graph.input}
    if INPUT not in inputs:
        raise HarnessError(f"{model_path}: no input named {INPUT!r} (the KiTS19 3D U-Net's); found {sorted(inputs)}")
    dims = [d.dim_value for d in inputs[INPUT].type.tensor_type.shape.dim]
    if len(dims) != 5 or dims[1] != 1 or not dims[2] or len(set(dims[2:])) != 1:
        raise HarnessError(f"{model_path}: input {INPUT!r} has shape {dims}, expected (N, 1, P, P, P)")
    return int(dims[2])


def build_model(path: Path, seed: int, size: str = "small") -> Path:
    """Write the synthetic model for ``seed`` to ``path`` (atomically), its output bias calibrated
    on synthetic CT patches made from the same seed."""
    from .synthetic import calibration_patches

    model = build(seed, size, calibration_patches(seed, PATCH.get(size, 0)))
    with temp_path_for(path) as tmp:
        onnx.save(model, str(tmp))
    return path
