"""The ONNX ops onnx2torch lacks or gets wrong, as ``torch_graph.convert`` uses them.

onnx2torch has no LSTM converter (rnnt) nor Compress (ssd's batched post-processing): both are
registered here (LSTM forward, one direction, the sequence lengths through a packed sequence); its
NonMaxSuppression, a Python loop over images and classes reading each kept box back on its own,
is replaced by one NMS for the whole batch (``OnnxNMS``), and its ConstantOfShape and ScatterND,
which read values back, by ``ConstantOfShape`` and ``ScatterND``; its instance norm by one
reduction (``InstanceNorm``). The batched NMS ran on an H200 with ssd (2026-12-05).
"""

from __future__ import annotations

import operator
from typing import Any

import onnx
import torch
from torch import nn


class OnnxLSTM(nn.Module):
    """ONNX's LSTM (forward, layout 0, default activations) as torch.nn.LSTM: Y (T, 1, B, H) zero
    past each sequence's length, Y_h and Y_c (1, B, H) at each sequence's last step."""

    def __init__(self, w: Any, r: Any, b: Any, outputs: int) -> None:
        super().__init__()
        hidden = r.shape[-1]
        # ONNX orders the gates i, o, f, c; torch i, f, g (= c), o.
        gates = torch.cat([torch.arange(k * hidden, (k + 1) * hidden) for k in (0, 2, 3, 1)])
        self.lstm = nn.LSTM(w.shape[-1], hidden)
        b = torch.zeros(8 * hidden) if b is None else b[0]
        weights = {
            "weight_ih_l0": w[0],
            "weight_hh_l0": r[0],
            "bias_ih_l0": b[: 4 * hidden],
            "bias_hh_l0": b[4 * hidden :],
        }
        with torch.no_grad():
            for name, value in weights.items():
                getattr(self.lstm, name).copy_(value[gates])
        self.outputs = outputs

    def forward(self, x: Any, sequence_lens: Any = None, initial_h: Any = None, initial_c: Any = None) -> Any:
        zeros = x.new_zeros((1, x.shape[1], self.lstm.hidden_size))
        # cuDNN's LSTM refuses a non-contiguous state (rnnt's prediction net slices it from a larger one).
        h0 = zeros if initial_h is None else initial_h.contiguous()
        c0 = zeros if initial_c is None else initial_c.contiguous()
        if sequence_lens is None:
            y, (h, c) = self.lstm(x, (h0, c0))
        else:
            # A packed sequence stops each sequence at its length (torch wants the lengths on the
            # host, and none 0: a 0-length sequence runs one step, then gets zeros and its state).
            lengths = sequence_lens.to("cpu", torch.int64)
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1), enforce_sorted=False)
            y, (h, c) = self.lstm(packed, (h0, c0))
            y, _ = nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[0])
            ran = (lengths > 0).to(x.device)[None, :, None]
            y, h, c = y * ran, torch.where(ran, h, h0), torch.where(ran, c, c0)
        out = (y.unsqueeze(1), h, c)[: self.outputs]
        return out if self.outputs > 1 else out[0]


class OnnxNMS(nn.Module):
    """ONNX's NonMaxSuppression (boxes as any two opposite corners) for every image and class in one
    torchvision NMS: (K, 3) rows of image, class, box, by image, class, then falling score (equal
    scores: the lower box first), at most ``max_output_boxes_per_class`` per class, boxes scoring
    above ``score_threshold``. Each (image, class) group's boxes are moved apart by a whole offset,
    in float64 so that the moved coordinates stay exact (an IoU as from the float32 boxes; float32
    offsets would round them). Three waits for the GPU a call (the boxes over the threshold, NMS's
    kept count, the per-class cut), whatever the batch, while the candidates fit one call
    (``chunk``); ``limits`` (max per class, IoU, threshold) are the graph's constants read at
    conversion (``nms_limits``), else read at each call."""

    # Candidates one NMS call takes: its overlap mask grows with their square (torchvision's own
    # batched_nms stops offsetting groups past 20,000 on CUDA). Past it, images go in chunks, one wait more.
    chunk = 20_000

    def __init__(self, limits: tuple[int, float, float] | None = None) -> None:
        super().__init__()
        self.limits = limits

    def forward(
        self, boxes: Any, scores: Any, max_per_class: Any = None, iou: Any = None, threshold: Any = None
    ) -> Any:
        from torchvision.ops import nms

        most, iou_bound, floor = self.limits or _nms_limits(max_per_class, iou, threshold)
        none = boxes.new_empty((0, 3), dtype=torch.int64)
        if most <= 0:
            return none
        image, cls, box = (scores > floor).nonzero(as_tuple=True)  # wait: by image, class, then box
        if not len(image):
            return none
        corners = boxes[image, box].double()
        low, high = corners[:, :2], corners[:, 2:]
        corners = torch.cat([torch.minimum(low, high), torch.maximum(low, high)], 1)
        group = image * scores.shape[1] + cls
        span = (corners.max() - corners.min()).ceil() + 1  # on the device: no wait
        moved, score = corners + (group * span)[:, None], scores[image, cls, box].double()
        parts = []
        for start, end in self._chunks(image, scores.shape[0]):  # candidates are by image: chunks of whole images
            kept = nms(moved[start:end], score[start:end], iou_bound) + start  # falling score
            parts.append(kept[torch.argsort(group[kept], stable=True)])  # by group, falling score within each
        kept = torch.cat(parts)
        if most < scores.shape[2]:  # a class can have more boxes kept than the cap
            in_group = group[kept]
            rank = torch.arange(len(kept), device=kept.device) - torch.searchsorted(in_group, in_group)
            kept = kept[rank < most]
        return torch.stack([image[kept], cls[kept], box[kept]], dim=1)

    def _chunks(self, image: Any, images: int) -> list[tuple[int, int]]:
        """Candidate ranges of whole images, each at most ``chunk`` candidates (an image over it alone)."""
        if len(image) <= self.chunk:
            return [(0, len(image))]
        ends = torch.searchsorted(image, torch.arange(1, images + 1, device=image.device)).tolist()  # wait
        ranges, start, end = [], 0, 0
        for stop in ends:  # where each image's candidates end
            if stop - start > self.chunk and end > start:  # this image would overflow the chunk: close it
                ranges.append((start, end))
                start = end
            end = stop
        return [*ranges, (start, end)] if end > start else ranges


def _nms_limits(most: Any, iou: Any, threshold: Any) -> tuple[int, float, float]:
    """NonMaxSuppression's optional scalar inputs as Python values (ONNX's defaults where absent)."""
    return (
        int(most.item()) if most is not None else 0,
        float(iou.item()) if iou is not None else 0.0,
        float(threshold.item()) if threshold is not None else float("-inf"),
    )


def _constant(model: Any, node: Any) -> Any:
    """The tensor a graph node always gives (an initializer or a Constant), else None."""
    from onnx2torch.node_converters.constant import OnnxConstant

    if node.op == "get_attr":
        return operator.attrgetter(str(node.target))(model)
    if node.op == "call_module" and isinstance(m := model.get_submodule(str(node.target)), OnnxConstant):
        return m.value
    return None


def nms_limits(model: Any) -> int:
    """Read each ``OnnxNMS``'s max per class, IoU and threshold once, where the graph gives them as
    constants, and drop them from its call (three reads back a call fewer on a GPU). Returns how many."""
    done = 0
    for node in list(model.graph.nodes):
        if node.op != "call_module" or not isinstance(nms := model.get_submodule(str(node.target)), OnnxNMS):
            continue
        args = list(node.args[2:5])
        given = [None if a is None else _constant(model, a) for a in args]
        if node.kwargs or any(a is not None and v is None for a, v in zip(args, given, strict=True)):
            continue  # computed in the graph: read at each call
        given += [None] * (3 - len(given))
        nms.limits = _nms_limits(*given)
        node.args = node.args[:2]
        done += 1
    if done:
        model.graph.eliminate_dead_code()
        model.delete_all_unused_submodules()
        model.recompile()
    return done


class InstanceNorm(nn.Module):
    """ONNX's InstanceNormalization as one reduction (var_mean, accumulated in float32) and one
    fused multiply-add. torch's instance_norm runs as a batch norm over N x C channels, whose
    statistics kernel parallelises over channels only: on an H200 it took 70 % of the full-size
    3d-unet's GPU time (64 channels of 2M voxels each). It also refuses a single spatial element
    (the small 3d-unet's 1x1x1 bottom), which ONNX defines (the output is the bias)."""

    def __init__(self, norm: Any) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: Any) -> Any:
        var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), correction=0, keepdim=True)
        scale = torch.rsqrt(var.float() + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float().reshape(1, -1, *([1] * (x.dim() - 2)))
        shift = -mean.float() * scale
        if self.bias is not None:
            shift = shift + self.bias.float().reshape(1, -1, *([1] * (x.dim() - 2)))
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


class OnnxCompress(nn.Module):
    """ONNX's Compress: the slices along ``axis`` (of the flattened input when None) at ``keep``, the
    indices where its condition is true (``true_indices``, one node per condition: a graph's Compress
    nodes of one condition wait for the GPU once); a condition shorter than the axis selects among
    its first entries only."""

    def __init__(self, axis: int | None) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Any, keep: Any) -> Any:
        if self.axis is None:
            return x.reshape(-1).index_select(0, keep)
        return x.index_select(self.axis, keep)


def true_indices(condition: Any) -> Any:
    """Where a condition is true, flattened (a wait for the GPU: its size is the data's)."""
    return torch.nonzero(condition.reshape(-1).to(torch.bool)).reshape(-1)


def share_conditions(model: Any) -> int:
    """Give every ``OnnxCompress`` the indices of its condition from one ``true_indices`` node per
    condition (ssd's post-processing compresses five tensors by one mask). Returns the conditions."""
    shared: dict[Any, Any] = {}
    for node in list(model.graph.nodes):
        if node.op != "call_module" or not isinstance(model.get_submodule(str(node.target)), OnnxCompress):
            continue
        x, condition = node.args
        if condition not in shared:
            with model.graph.inserting_before(node):
                shared[condition] = model.graph.call_function(true_indices, (condition,))
        node.args = (x, shared[condition])
    model.recompile()
    return len(shared)


class ConstantOfShape(nn.Module):
    """ONNX's ConstantOfShape with its value read at conversion and its shape in one read (onnx2torch
    reads its device buffer back at each call, and the shape one dimension at a time)."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.fill = value.item()
        self.register_buffer("value", value.reshape(()).clone(), persistent=False)  # its device and dtype

    def forward(self, shape: Any) -> Any:
        return torch.full(shape.tolist(), self.fill, dtype=self.value.dtype, device=self.value.device)


class ScatterND(nn.Module):
    """ONNX's ScatterND (no reduction) indexed by the device tensors: onnx2torch reads the indices back
    as a Python list (a wait, and a copy back to the device)."""

    def forward(self, data: Any, indices: Any, updates: Any) -> Any:
        out = data.clone()
        where = indices.reshape(-1, indices.shape[-1]).unbind(1)
        out[where] = updates.reshape(-1, *updates.shape[indices.dim() - 1 :])
        return out


def _compress_converter(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    return OperationConverterResult(
        torch_module=OnnxCompress(node.attributes.get("axis")),
        onnx_mapping=OnnxMapping(inputs=tuple(node.input_values), outputs=tuple(node.output_values)),
    )


def _lstm_converter(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    a = node.attributes
    if a.get("direction", "forward") != "forward" or a.get("layout", 0) or a.get("input_forget", 0):
        raise NotImplementedError("LSTM: only forward, layout 0, no input_forget")
    if "activations" in a or "clip" in a:
        raise NotImplementedError("LSTM: only the default activations, no clip")
    names = list(node.input_values)
    if len(names) > 7 and names[7]:
        raise NotImplementedError("LSTM: no peepholes")
    try:
        w, r = (graph.initializers[n].to_torch() for n in names[1:3])
        b = graph.initializers[names[3]].to_torch() if len(names) > 3 and names[3] else None
    except KeyError:
        raise NotImplementedError("LSTM: weights must be initializers") from None
    inputs = [names[0], *names[4:7]]
    while inputs and not inputs[-1]:
        inputs.pop()
    return OperationConverterResult(
        torch_module=OnnxLSTM(w, r, b, len(node.output_values)),
        onnx_mapping=OnnxMapping(inputs=tuple(inputs), outputs=tuple(node.output_values)),
    )


def register_converters() -> None:
    from onnx2torch.node_converters.registry import add_converter, get_converter

    ours = {"LSTM": ((7, 14, 22), _lstm_converter), "Compress": ((9, 11), _compress_converter)}
    for op, (versions, converter) in ours.items():
        for version in versions:
            try:
                get_converter(op, version)
            except NotImplementedError:
                add_converter(op, version)(converter)


def missing_converters(proto: onnx.ModelProto) -> list[str]:
    """The graph's ops onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain: o.version for o in proto.opset_import}
    missing = []
    for node in proto.graph.node:
        try:
            get_converter(node.op_type, opsets.get(node.domain, 1), node.domain)
        except NotImplementedError:
            missing.append(node.op_type if not node.domain else f"{node.domain}.{node.op_type}")
    return sorted(set(missing))
