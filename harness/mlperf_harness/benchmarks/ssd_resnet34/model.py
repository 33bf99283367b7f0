"""The SSD-ResNet34 ONNX graph of MLPerf's resnet34-ssd1200.onnx, with random weights (fixed seed).

Architecture as the reference's ``SSD_R34``: torchvision ResNet-34 up to layer3 (layer3's first block
at stride 1, so the backbone output is 1/8 of the input), five extra blocks, and 3x3 location and
confidence heads of stride 3 on the six feature maps (4, 6, 6, 6, 4, 4 default boxes per cell,
81 classes with background at 0); at 1200x1200 that is 50, 25, 13, 7, 3, 3 cells and 15130 boxes.
BatchNorm is folded into the convolutions' bias, as an inference graph has it.

As in the official ONNX file, decoding and NMS are inside the graph: box deltas are decoded against
the default boxes (scale_xy 0.1, scale_wh 0.2) into ltrb in [0, 1] of the input, classes are a
softmax over the 81 logits, then ONNX NonMaxSuppression per class (IoU 0.5, score > 0.05, at most
200 per class) and the best 200 over all classes by score, in decreasing order. Input ``image``
(B, 3, S, S) float32; outputs ``bboxes`` (B, N, 4) float32 ltrb, ``labels`` (B, N) int64 (1..80,
contiguous COCO class indices), ``scores`` (B, N) float32, N the batch's largest count, the other
images' rows padded with score 0. The official resnet34-ssd1200.onnx has the same interface with
B fixed at 1 (the reference runs it with max-batchsize 1); this one takes any batch.

Random weights give no confident classes, so the heads are calibrated on a few synthetic images:
each head channel is centred and scaled on its observed statistics, and the background logit gets
the bias that makes a few boxes per image reach the 0.5 score the reference's post-processing
keeps (``TARGET_PER_IMAGE``). The synthetic COCO set is labelled with those detections.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "image"
BATCH = "batch"  # the graph's batch dimension (the official graph's is 1)
BBOXES, LABELS, SCORES = "bboxes", "labels", "scores"
OUTPUTS = (BBOXES, LABELS, SCORES)
CLASSES = 81  # 80 COCO classes and background (0)
IMAGE_SIZE = 1200
STRIDES = (3, 3, 2, 2, 2, 2)  # the reference's: both heads, then extra blocks 1..4
EXTRA_STRIDES = (*STRIDES[2:], 1)  # the fifth extra block has stride 1
NUM_DEFAULTS = (4, 6, 6, 6, 4, 4)
ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SCALES_300 = (21, 45, 99, 153, 207, 261, 315)  # default box sizes for a 300-pixel image, scaled
SCALE_XY, SCALE_WH = 0.1, 0.2
NMS_IOU, NMS_SCORE, MAX_PER_CLASS, MAX_OUTPUT = 0.5, 0.05, 200, 200
REPORT_SCORE = 0.5  # PostProcessCocoOnnx logs detections down to this score
# Calibration: the spread of the class logits, and how many boxes per image (on average, before NMS)
# have a class reaching REPORT_SCORE: about a dozen detections per image remain after NMS.
LOGIT_SCALE = 4.0
# Spread of the box deltas: random activations grow with an image's contrast, and at 1 the
# largest default boxes stretched to several image widths on high-contrast images.
LOC_SCALE = 0.5
TARGET_PER_IMAGE = 20


@dataclass(frozen=True)
class Variant:
    image_size: int
    stem: int
    layers: tuple[int, int, int]  # ResNet-34 layer1..3 widths
    out_channels: tuple[int, ...]  # the six feature maps' channels
    mids: tuple[int, ...]  # the extra blocks' 1x1 bottleneck widths
    calibration_size: int  # calibrating at a lower resolution keeps the CPU cost small
    calibration_images: int


VARIANTS = {
    "full": Variant(IMAGE_SIZE, 64, (64, 128, 256), (256, 512, 512, 256, 256, 256), (256, 256, 128, 128, 128), 600, 4),
    # The same graph, an eighth of the widths; 400 is the smallest input whose last extra block
    # (3x3, no padding) still has a cell (300 leaves it none at these strides).
    "small": Variant(400, 8, (8, 16, 32), (32, 64, 64, 32, 32, 32), (32, 32, 16, 16, 16), 400, 8),
}


def _conv_out(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def feature_sizes(image_size: int) -> list[int]:
    """Cells per side of the six head outputs (the reference hard-codes 50, 25, 13, 7, 3, 3 for 1200)."""
    n = _conv_out(_conv_out(image_size, 7, 2, 3), 3, 2, 1)  # stem conv and max-pool
    n = _conv_out(n, 3, 2, 1)  # layer2; layer3 keeps its size
    maps = [n]
    for i, s in enumerate(EXTRA_STRIDES):
        n = _conv_out(n, 3, s, 0 if i >= 3 else 1)  # the last two extra blocks have no padding
        maps.append(n)
    sizes = [_conv_out(m, 3, STRIDES[0], 1) for m in maps]
    if min(sizes) < 1 or min(maps) < 1:
        raise ValueError(f"input {image_size} is too small for SSD-ResNet34's strides")
    return sizes


def default_boxes(image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The reference's default boxes (``dboxes_R34_coco``) as (B, 4) float32 cx, cy, w, h in [0, 1],
    in the order of the heads' flattened outputs: per map, per box shape, per row, per column."""
    feats = feature_sizes(image_size)
    steps = [int(image_size / f) for f in feats]
    scales = [int(s * image_size / 300) for s in SCALES_300]
    boxes = []
    for idx, f in enumerate(feats):
        fk = image_size // steps[idx]
        sk1, sk2 = scales[idx] / image_size, scales[idx + 1] / image_size
        sk3 = sqrt(sk1 * sk2)
        shapes = [(sk1, sk1), (sk3, sk3)]
        for a in ASPECT_RATIOS[idx]:
            shapes += [(sk1 * sqrt(a), sk1 / sqrt(a)), (sk1 / sqrt(a), sk1 * sqrt(a))]
        rows, cols = np.meshgrid(np.arange(f), np.arange(f), indexing="ij")
        cx, cy = ((cols.ravel() + 0.5) / fk), ((rows.ravel() + 0.5) / fk)
        for w, h in shapes:
            boxes.append(np.stack([cx, cy, np.full_like(cx, w), np.full_like(cx, h)], axis=1))
    return np.clip(np.concatenate(boxes).astype(np.float32), 0.0, 1.0)


class _Graph:
    """Nodes plus named weight arrays, kept as numpy until the end so calibration can rescale them."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.weights: dict[str, np.ndarray] = {}
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.fresh(prefix)
        self.weights[name] = value
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int, pad: int, relu: bool = True, gain: float = 1.0
    ) -> str:
        # He initialisation keeps activations in range through the random-weight backbone.
        std = gain * np.sqrt(2.0 / (cin * k * k))
        w = (self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        (y,) = self.op(
            "Conv",
            [x, self.const(w, "W"), self.const(b, "B")],
            kernel_shape=[k, k],
            strides=[stride] * 2,
            pads=[pad] * 4,
        )
        return self.op("Relu", [y])[0] if relu else y

    def basic_block(self, x: str, cin: int, cout: int, stride: int) -> str:
        y = self.conv(x, cin, cout, 3, stride, 1)
        y = self.conv(y, cout, cout, 3, 1, 1, relu=False, gain=0.3)
        short = x if (stride == 1 and cin == cout) else self.conv(x, cin, cout, 1, stride, 0, relu=False)
        return self.op("Relu", [self.op("Add", [y, short])[0]])[0]


@dataclass
class _Heads:
    loc: list[tuple[str, str, str]]  # (output, weight, bias) per feature map
    conf: list[tuple[str, str, str]]


def _network(g: _Graph, v: Variant) -> _Heads:
    """Backbone, extra blocks and heads up to the raw head convolutions."""
    x = g.conv(INPUT, 3, v.stem, 7, 2, 3)
    (x,) = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = v.stem
    for width, blocks, stride in zip(v.layers, (3, 4, 6), (1, 2, 1), strict=True):  # layer3 at stride 1
        for i in range(blocks):
            x = g.basic_block(x, c, width, stride if i == 0 else 1)
            c = width
    maps = [x]
    for i, mid in enumerate(v.mids):
        y = g.conv(maps[-1], v.out_channels[i], mid, 1, 1, 0)
        y = g.conv(y, mid, v.out_channels[i + 1], 3, EXTRA_STRIDES[i], 0 if i >= 3 else 1)
        maps.append(y)
    heads = _Heads([], [])
    for fmap, cin, nd in zip(maps, v.out_channels, NUM_DEFAULTS, strict=True):
        for kind, cout in ((heads.loc, nd * 4), (heads.conf, nd * CLASSES)):
            out = g.conv(fmap, cin, cout, 3, STRIDES[0], 1, relu=False)
            w_name, b_name = g.nodes[-1].input[1], g.nodes[-1].input[2]
            kind.append((out, w_name, b_name))
    return heads


def _make_model(g: _Graph, size: int | str, outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(a, n) for n, a in g.weights.items()]
    graph = helper.make_graph(
        g.nodes,
        "ssd_resnet34_synthetic",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [BATCH, 3, size, size])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mlperf-operator")
    model.ir_version = 7  # opset 13's IR: older onnxruntimes refuse newer ones
    model.doc_string = "SYNTHETIC: random-weight SSD-ResNet34 (MLPerf resnet34-ssd1200.onnx interface), not trained"
    return model


def _calibration_images(seed: int, size: int, n: int) -> list[np.ndarray]:
    from .coco import preprocess_image, synthetic_image

    return [preprocess_image(synthetic_image(seed ^ 0x55D, i), size)[None] for i in range(n)]


def _calibrate(g: _Graph, heads: _Heads, v: Variant, seed: int) -> None:
    """Centre and scale every head channel on synthetic images, then choose the background bias
    that lets TARGET_PER_IMAGE boxes per image reach REPORT_SCORE."""
    import onnxruntime as ort

    raw = [o for o, _, _ in heads.loc + heads.conf]
    probe = _make_model(g, "S", [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in raw])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    runs = [sess.run(raw, {INPUT: img}) for img in _calibration_images(seed, v.calibration_size, v.calibration_images)]
    logits = []
    for h, (_, w_name, b_name) in enumerate(heads.loc + heads.conf):
        acts = np.stack([r[h][0] for r in runs]).astype(np.float64)  # (images, channels, y, x)
        # Per-channel means, one spread per head: the 1x1 maps give too few values for a channel's own.
        mean = acts.mean(axis=(0, 2, 3))
        std = np.full_like(mean, (acts - mean[None, :, None, None]).std() + 1e-6)
        scale = LOC_SCALE if h < len(heads.loc) else LOGIT_SCALE
        w, b = g.weights[w_name], g.weights[b_name]
        g.weights[w_name] = (w * (scale / std)[:, None, None, None]).astype(np.float32)
        g.weights[b_name] = ((b - mean) * scale / std).astype(np.float32)
        if h >= len(heads.loc):
            z = (acts - mean[None, :, None, None]) * (scale / std)[None, :, None, None]
            logits.append(z.reshape(len(runs), CLASSES, -1))  # channel = class * boxes_per_cell + box
    cal = np.concatenate(logits, axis=2)  # (images, 81, boxes)
    bias = _background_bias(cal, TARGET_PER_IMAGE / len(default_boxes(v.image_size)))
    for _, _, b_name in heads.conf:
        nd = len(g.weights[b_name]) // CLASSES
        g.weights[b_name][:nd] += np.float32(bias)  # class 0's channels come first


def _background_bias(logits: np.ndarray, fraction: float) -> float:
    """Bisect the background logit's offset so that ``fraction`` of the boxes keep a class >= 0.5."""
    fg_max = logits[:, 1:].max(axis=1)
    fg_lse = np.log(np.exp(logits[:, 1:] - fg_max[:, None]).sum(axis=1)) + fg_max

    def share(bias: float) -> float:
        # best class probability = exp(max) / (exp(lse_fg) + exp(bg + bias))
        best = fg_max - np.logaddexp(fg_lse, logits[:, 0] + bias)
        return float((best >= np.log(REPORT_SCORE)).mean())

    lo, hi = -50.0, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if share(mid) > fraction else (lo, mid)
    return (lo + hi) / 2


def _postprocess(g: _Graph, heads: _Heads, image_size: int) -> None:
    """Decode and NMS inside the graph, ending in the official outputs."""

    def i64(*v: int) -> str:
        return g.const(np.array(v, dtype=np.int64))

    def f32(v: float | np.ndarray) -> str:
        return g.const(np.asarray(v, dtype=np.float32))

    locs = [g.op("Reshape", [o, i64(0, 4, -1)])[0] for o, _, _ in heads.loc]
    confs = [g.op("Reshape", [o, i64(0, CLASSES, -1)])[0] for o, _, _ in heads.conf]
    (loc,) = g.op("Transpose", [g.op("Concat", locs, axis=2)[0]], perm=[0, 2, 1])  # (B, boxes, 4)
    (conf,) = g.op("Concat", confs, axis=2)  # (B, 81, boxes)
    dboxes = default_boxes(image_size)[None]
    dxy, dwh = f32(dboxes[..., :2]), f32(dboxes[..., 2:])
    (dxy_in,) = g.op("Slice", [loc, i64(0), i64(2), i64(2)])
    (dwh_in,) = g.op("Slice", [loc, i64(2), i64(4), i64(2)])
    (cxy,) = g.op("Mul", [g.op("Mul", [dxy_in, f32(SCALE_XY)])[0], dwh])
    (cxy,) = g.op("Add", [cxy, dxy])
    (wh,) = g.op("Mul", [g.op("Exp", [g.op("Mul", [dwh_in, f32(SCALE_WH)])[0]])[0], dwh])
    (half,) = g.op("Mul", [wh, f32(0.5)])
    (boxes,) = g.op("Concat", [g.op("Sub", [cxy, half])[0], g.op("Add", [cxy, half])[0]], axis=2)
    (probs,) = g.op("Softmax", [conf], axis=1)
    (fg,) = g.op("Slice", [probs, i64(1), i64(CLASSES), i64(1)])  # background is never a detection
    (sel,) = g.op(
        "NonMaxSuppression", [boxes, fg, g.const(np.array(MAX_PER_CLASS, dtype=np.int64)), f32(NMS_IOU), f32(NMS_SCORE)]
    )  # (K, 3): image, class, box
    image, cls = (g.op("Gather", [sel, g.const(np.array(k, dtype=np.int64))], axis=1)[0] for k in (0, 1))
    (sel_scores,) = g.op("GatherND", [fg, sel])
    (sel_boxes,) = g.op("GatherND", [boxes, g.op("Gather", [sel, i64(0, 2)], axis=1)[0]])
    (sel_labels,) = g.op("Add", [cls, g.const(np.array(1, dtype=np.int64))])
    # Order by image, then by decreasing score: a float64 key, exact for any batch.
    (key,) = g.op("Cast", [image], to=TensorProto.DOUBLE)
    (key,) = g.op(
        "Sub", [g.op("Mul", [key, g.const(np.array(2.0))])[0], g.op("Cast", [sel_scores], to=TensorProto.DOUBLE)[0]]
    )
    (k,) = g.op("Shape", [sel_scores])
    _, order = g.op("TopK", [key, k], outputs=2, axis=0, largest=0, sorted=1)
    image, scores, labels = (g.op("Gather", [t, order], axis=0)[0] for t in (image, sel_scores, sel_labels))
    (det_boxes,) = g.op("Gather", [sel_boxes, order], axis=0)
    # Each detection's rank within its image; the best MAX_OUTPUT of each image are kept.
    (batch,) = g.op("Gather", [g.op("Shape", [boxes])[0], i64(0)])  # (1,)
    (images,) = g.op(
        "Range",
        [
            g.const(np.array(0, dtype=np.int64)),
            g.op("Squeeze", [batch, i64(0)])[0],
            g.const(np.array(1, dtype=np.int64)),
        ],
    )
    (member,) = g.op("Equal", [g.op("Unsqueeze", [images, i64(1)])[0], g.op("Unsqueeze", [image, i64(0)])[0]])
    (counts,) = g.op("ReduceSum", [g.op("Cast", [member], to=TensorProto.INT64)[0], i64(1)], keepdims=0)  # (B,)
    (starts,) = g.op("CumSum", [counts, g.const(np.array(0, dtype=np.int64))], exclusive=1)
    (positions,) = g.op(
        "Range",
        [g.const(np.array(0, dtype=np.int64)), g.op("Squeeze", [k, i64(0)])[0], g.const(np.array(1, dtype=np.int64))],
    )
    (rank,) = g.op("Sub", [positions, g.op("Gather", [starts, image], axis=0)[0]])
    (keep,) = g.op("Less", [rank, g.const(np.array(MAX_OUTPUT, dtype=np.int64))])
    image, rank, scores, labels, det_boxes = (
        g.op("Compress", [t, keep], axis=0)[0] for t in (image, rank, scores, labels, det_boxes)
    )
    (where,) = g.op("Concat", [g.op("Unsqueeze", [t, i64(1)])[0] for t in (image, rank)], axis=1)  # (K', 2)
    (width,) = g.op("ReduceMax", [g.op("Min", [counts, i64(MAX_OUTPUT)])[0]], keepdims=1)  # (1,) N
    (shape2,) = g.op("Concat", [batch, width], axis=0)
    (shape3,) = g.op("Concat", [batch, width, i64(4)], axis=0)

    def padded(out: str, shape: str, value: np.ndarray, updates: str) -> None:
        (zeros,) = g.op("ConstantOfShape", [shape], value=numpy_helper.from_array(value))
        g.nodes.append(helper.make_node("ScatterND", [zeros, where, updates], [out]))

    padded(BBOXES, shape3, np.zeros(1, np.float32), det_boxes)
    padded(LABELS, shape2, np.zeros(1, np.int64), labels)
    padded(SCORES, shape2, np.zeros(1, np.float32), scores)


def build(seed: int, size: str = "small", calibrate: bool = True) -> onnx.ModelProto:
    """The synthetic model for ``seed``; ``size`` "full" (1200x1200, real widths) or "small"."""
    if size not in VARIANTS:
        raise ValueError(f"size must be one of {', '.join(VARIANTS)}, not {size!r}")
    v = VARIANTS[size]
    g = _Graph(np.random.default_rng(seed))
    heads = _network(g, v)
    if calibrate:
        _calibrate(g, heads, v, seed)
    _postprocess(g, heads, v.image_size)
    return _make_model(
        g,
        v.image_size,
        [
            helper.make_tensor_value_info(BBOXES, TensorProto.FLOAT, [BATCH, "N", 4]),
            helper.make_tensor_value_info(LABELS, TensorProto.INT64, [BATCH, "N"]),
            helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, [BATCH, "N"]),
        ],
    )


def image_size_of(model_path: Path) -> int:
    """The square input size a model file expects (1200 for the official and full models)."""
    model = onnx.load(str(model_path), load_external_data=False)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return dims[-1] if len(dims) == 4 and dims[-1] > 0 else IMAGE_SIZE


def build_model(path: Path, seed: int, size: str = "small") -> Path:
    """Write the synthetic model for ``seed`` to ``path`` (atomically)."""
    from ...fsutil import temp_path_for

    model = build(seed, size)
    with temp_path_for(path) as tmp:
        onnx.save(model, str(tmp))
    return path
