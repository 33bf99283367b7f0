"""The two rounds' 3D U-Nets of the real architecture with random weights (fixed seed), as ONNX.

KiTS19 (v6.1): MLPerf's 3D U-Net (the training benchmark's model, which the inference
reference loads): an input block and four downsampling blocks (32, 64, 128, 256, 320 channels),
a strided bottleneck, five upsampling blocks (a 2x2x2 transposed convolution, concatenation
with the skip, two convolutions) and a 1x1x1 output convolution to 3 classes. Every 3x3x3
convolution is followed by an affine instance norm and a ReLU and has no bias. Interface of
``3dunet_kits19_128x128x128_dynbatch.onnx``: ``input`` (N, 1, 128, 128, 128) float32 ->
``output`` (N, 3, 128, 128, 128) float32 logits, opset 12.

BraTS 2019 (v1.0): nnU-Net's Generic_UNet as trained for Task043 (fold 1): the same topology with
30, 60, 120, 240, 320 channels and a 320-channel bottleneck, convolutions with bias, LeakyReLU
(slope 0.01), transposed convolutions without bias, 4 input modalities and 4 classes, and deep
supervision: ``output`` (N, 4, 224, 224, 160) is the full-resolution head and four lower-resolution
heads follow it, as in ``224_224_160_dyanmic_bs.onnx`` (opset 11). Its heads have no bias in
nnU-Net; here the full-resolution head has one, set so that every class appears.

``size="small"``: the same graphs with narrow channels and small inputs, for CI on two cores.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import HarnessError
from ...fsutil import temp_path_for

INPUT = "input"
OUTPUT = "output"


@dataclass(frozen=True)
class Arch:
    name: str
    in_channels: int
    classes: int
    filters: tuple[int, ...]  # per level; the bottleneck repeats the last
    shape: tuple[int, int, int]  # spatial input shape
    opset: int
    leaky: float | None = None  # LeakyReLU slope, else ReLU
    conv_bias: bool = False
    deep_supervision: bool = False
    # Shares of the voxels the calibrated head gives the classes after background.
    shares: tuple[float, ...] = ()


KITS19 = {
    "full": Arch("3dunet_kits19", 1, 3, (32, 64, 128, 256, 320), (128, 128, 128), 12, shares=(0.25, 0.12)),
    "small": Arch("3dunet_kits19", 1, 3, (4, 8, 8, 16, 16), (32, 32, 32), 12, shares=(0.25, 0.12)),
}
BRATS19 = {
    "full": Arch(
        "3dunet_brats19", 4, 4, (30, 60, 120, 240, 320), (224, 224, 160), 11, 0.01, True, True, (0.1, 0.05, 0.05)
    ),
    "small": Arch("3dunet_brats19", 4, 4, (4, 8, 8, 16, 16), (64, 64, 32), 11, 0.01, True, True, (0.1, 0.05, 0.05)),
}
# Kept for callers of the KiTS19 model.
FILTERS = {k: a.filters for k, a in KITS19.items()}
PATCH = {k: a.shape[0] for k, a in KITS19.items()}


class _Graph:
    def __init__(self, rng: np.random.Generator, arch: Arch) -> None:
        self.rng = rng
        self.arch = arch
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
        """3x3x3 convolution, affine instance norm, ReLU or LeakyReLU."""
        w = self.rng.standard_normal((cout, cin, 3, 3, 3), dtype=np.float32) * np.sqrt(2.0 / (cin * 27))
        inputs = [x, self.const("W", w)]
        if self.arch.conv_bias:
            inputs.append(self.const("B", 0.05 * self.rng.standard_normal(cout, dtype=np.float32)))
        conv = self.name("conv")
        self.nodes.append(
            helper.make_node("Conv", inputs, [conv], kernel_shape=[3, 3, 3], strides=[stride] * 3, pads=[1] * 6)
        )
        scale = 1.0 + 0.1 * self.rng.standard_normal(cout, dtype=np.float32)
        bias = 0.1 * self.rng.standard_normal(cout, dtype=np.float32)
        norm, act = self.name("instnorm"), self.name("relu")
        gamma, beta = self.const("gamma", scale), self.const("beta", bias)
        self.nodes.append(helper.make_node("InstanceNormalization", [conv, gamma, beta], [norm], epsilon=1e-5))
        if self.arch.leaky is None:
            self.nodes.append(helper.make_node("Relu", [norm], [act]))
        else:
            self.nodes.append(helper.make_node("LeakyRelu", [norm], [act], alpha=self.arch.leaky))
        return act

    def upsample(self, x: str, skip: str, cin: int, cout: int) -> str:
        w = self.rng.standard_normal((cin, cout, 2, 2, 2), dtype=np.float32) * np.sqrt(1.0 / (cin * 8))
        inputs = [x, self.const("W", w)]
        if not self.arch.conv_bias:  # KiTS19's transposed convolutions have a bias, nnU-Net's none
            inputs.append(self.const("B", 0.05 * self.rng.standard_normal(cout, dtype=np.float32)))
        up, cat = self.name("convtranspose"), self.name("concat")
        self.nodes.append(helper.make_node("ConvTranspose", inputs, [up], kernel_shape=[2, 2, 2], strides=[2, 2, 2]))
        self.nodes.append(helper.make_node("Concat", [up, skip], [cat], axis=1))
        y = self.conv_block(cat, 2 * cout, cout)
        return self.conv_block(y, cout, cout)

    def head(self, x: str, cin: int, out: str, bias: np.ndarray | None, w: np.ndarray | None = None) -> str:
        if w is None:
            w = self.rng.standard_normal((self.arch.classes, cin, 1, 1, 1), dtype=np.float32) * np.sqrt(1.0 / cin)
        inputs = [x, self.const("W", w)] + ([] if bias is None else [self.const("B", bias)])
        self.nodes.append(helper.make_node("Conv", inputs, [out], kernel_shape=[1, 1, 1]))
        return out


def _body(g: _Graph) -> tuple[str, list[tuple[str, int]]]:
    """Everything up to the last feature map; also the decoder's feature maps (name, channels),
    coarsest first, for the deep-supervision heads."""
    filters = g.arch.filters
    x = g.conv_block(INPUT, g.arch.in_channels, filters[0])
    x = g.conv_block(x, filters[0], filters[0])
    skips = [x]
    for cin, cout in itertools.pairwise(filters):
        x = g.conv_block(g.conv_block(x, cin, cout, stride=2), cout, cout)
        skips.append(x)
    x = g.conv_block(g.conv_block(x, filters[-1], filters[-1], stride=2), filters[-1], filters[-1])  # bottleneck
    ups = [(filters[-1], filters[-1]), *zip(reversed(filters[1:]), reversed(filters[:-1]), strict=True)]
    decoded = []
    for (cin, cout), skip in zip(ups, reversed(skips), strict=True):
        x = g.upsample(x, skip, cin, cout)
        decoded.append((x, cout))
    return x, decoded


def _model(g: _Graph, outputs: Sequence[tuple[str, int, int]]) -> onnx.ModelProto:
    """``outputs``: (name, channels, downsampling factor)."""
    arch = g.arch
    graph = helper.make_graph(
        g.nodes,
        f"{arch.name}_synthetic",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch_size", arch.in_channels, *arch.shape])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", c, *(s // f for s in arch.shape)])
            for name, c, f in outputs
        ],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", arch.opset)], producer_name="mlperf-operator"
    )
    model.ir_version = 6 if arch.opset == 11 else 7  # the opset's IR: older onnxruntimes refuse newer ones
    model.doc_string = f"SYNTHETIC: random-weight {arch.name} 3D U-Net, not a trained model"
    return model


def build_arch(seed: int, arch: Arch, calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """The model for ``seed``. With ``calibration`` inputs (N, C, *shape) of preprocessed data, the
    full-resolution head's bias is set so that each class after background wins on about its share
    of the voxels (random weights otherwise give one class almost everywhere)."""
    rng = np.random.default_rng(seed)
    g = _Graph(rng, arch)
    feat, decoded = _body(g)
    c0 = arch.filters[0]
    w = rng.standard_normal((arch.classes, c0, 1, 1, 1), dtype=np.float32) * np.sqrt(1.0 / c0)
    bias = np.zeros(arch.classes, dtype=np.float32)
    if calibration is not None:
        feats = _run(_model(g, [(feat, c0, 1)]), feat, calibration)
        bias = _calibrated_bias(feats, w.reshape(arch.classes, -1), arch.shares)
    g.head(feat, c0, OUTPUT, bias, w)
    outputs = [(OUTPUT, arch.classes, 1)]
    if arch.deep_supervision:  # nnU-Net's lower-resolution heads, finest first, after the main one
        for level, (x, c) in enumerate(reversed(decoded[:-1]), start=1):
            outputs.append((g.head(x, c, f"ds_output_{level}", None), arch.classes, 2**level))
    return _model(g, outputs)


def build(seed: int, size: str = "small", calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """The KiTS19 model (see ``build_arch``)."""
    if size not in KITS19:
        raise HarnessError(f"3d-unet model size {size!r}: use 'small' or 'full'")
    return build_arch(seed, KITS19[size], calibration)


def _run(model: onnx.ModelProto, output: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([output], {INPUT: x.astype(np.float32)})[0])


def _calibrated_bias(feats: np.ndarray, w: np.ndarray, shares: Sequence[float]) -> np.ndarray:
    logits = np.einsum("kc,nc...->kn...", w, feats).reshape(len(w), -1).astype(np.float64)
    bias = np.zeros(len(w), dtype=np.float64)
    best = logits[0].copy()
    # Class k beats everything before it on shares[k-1] of the voxels, one class at a time.
    for k, share in enumerate(shares, start=1):
        bias[k] = -np.quantile(logits[k] - best, 1.0 - share)
        best = np.maximum(best, logits[k] + bias[k])
    return bias.astype(np.float32)


def input_shape(model_path: Path, channels: int = 1) -> tuple[int, ...]:
    """The spatial input shape of a 3D U-Net ONNX file (checked against ``channels``)."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise HarnessError(f"{model_path}: not a readable ONNX model ({str(exc).splitlines()[0][:120]})") from None
    inputs = {i.name: i for i in model.graph.input}
    if INPUT not in inputs:
        raise HarnessError(f"{model_path}: no input named {INPUT!r} (the 3D U-Net's); found {sorted(inputs)}")
    dims = [d.dim_value for d in inputs[INPUT].type.tensor_type.shape.dim]
    if len(dims) != 5 or dims[1] != channels or not all(dims[2:]):
        raise HarnessError(f"{model_path}: input {INPUT!r} has shape {dims}, expected (N, {channels}, D, H, W)")
    return tuple(int(d) for d in dims[2:])


def patch_size(model_path: Path) -> int:
    """The cubic patch edge of a KiTS19 3D U-Net ONNX file (128 for the official model)."""
    shape = input_shape(model_path, 1)
    if len(set(shape)) != 1:
        raise HarnessError(f"{model_path}: input patch {shape} is not cubic, as the KiTS19 model's is")
    return shape[0]


def save(model: onnx.ModelProto, path: Path) -> Path:
    with temp_path_for(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def build_model(path: Path, seed: int, size: str = "small") -> Path:
    """Write the synthetic KiTS19 model for ``seed`` to ``path`` (atomically), its head calibrated on
    synthetic CT patches made from the same seed."""
    from .synthetic import calibration_patches

    if size not in KITS19:
        raise HarnessError(f"3d-unet model size {size!r}: use 'small' or 'full'")
    return save(build(seed, size, calibration_patches(seed, KITS19[size].shape[0])), path)
