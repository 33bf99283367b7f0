"""PyTorch's general path: any ONNX graph onnx2torch converts, with named inputs and outputs.

The image path (``torch_backend.PyTorchBackend``) runs one 4-D float image input and one output;
every other graph (bert's int ids, dlrm's three inputs, ssd's detections, rnnt's parts, 3d-unet's
volumes) runs here: feeds are named numpy arrays, float ones cast to the run's precision (fp16 or
bf16 on a GPU, fp32 on the CPU), int ones kept as they are; the outputs asked for come back as
float32 (or the graph's int dtype). On a GPU: pinned host buffers, copies on the instance's own
stream, and one CUDA graph per input-shape signature (``signature``: the batch bucket and the sizes
of the dynamic dimensions a benchmark's batches have, as bert's sequence lengths trimmed to a few
buckets), at most ``MAX_GRAPHS`` per instance, a new shape past them running eagerly. Graphs whose
inputs do not all lead with the batch (dlrm's (26, rows) offsets: ``batch_axis_reason``) run
eagerly. A graph whose call waits for the GPU (ssd's detections are data-sized, rnnt's encoder
reads its lengths back) is cut before its first wait (``split_at``): the part before it captured,
the rest run eagerly on its outputs, where the part before has at least as many ops as the rest;
``eager_reason`` says where and why (onnx2torch reads shapes, axes and sizes back as Python values:
``host_shape_arithmetic`` keeps those on the host first). BERT's attention is fused on a GPU
(``fuse_attention``). The GPU part ran on H200s (BENCHMARKS.md), except what
came after the last run there (2026-12-04): capture per signature rather than per batch bucket of
fixed shapes (bert's trimmed lengths), whose bookkeeping only the CPU tests cover, and the split
capture and batched NMS (session 8: their parts tested on the CPU, the capture not yet on a GPU).

onnx2torch has no LSTM converter (rnnt) nor Compress (ssd's batched post-processing): both are
registered here (LSTM forward, one direction, the sequence lengths through a packed sequence); its
CumSum reverses a sum whose ``reverse`` attribute is absent, which ``convert`` corrects; its
NonMaxSuppression, a Python loop over images and classes reading each kept box back on its own,
is replaced by one NMS for the whole batch (``OnnxNMS``), and its ConstantOfShape and ScatterND,
which read values back, by ``ConstantOfShape`` and ``ScatterND``.
"""

from __future__ import annotations

import contextlib
import operator
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import HarnessError
from .base import ModelBackend, Tensors, TensorSpec, pick_outputs
from .torch_backend import _numpy, _torch, batch_bucket, torch_device

MAX_GRAPHS = 64  # CUDA graphs per instance: bert's 6 lengths x 8 batch buckets fit; a shape past them runs eagerly
Signature = tuple[tuple[int, ...], ...]  # each input's shape, the batch padded to its bucket
Captured = tuple[Any, list[Any], tuple[Any, ...]]  # a CUDA graph, its static inputs and outputs


def _load_proto(path: Path, weights: bool = True) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as exc:  # onnx raises its own untyped errors for bad files
        raise HarnessError(f"{path.name}: not a loadable ONNX model ({str(exc).splitlines()[0][:160]})") from None


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (older exporters list the initializers among the inputs too)."""
    weights = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def batch_axis_reason(inputs: Sequence[onnx.ValueInfoProto]) -> str:
    """Why CUDA graphs cannot pad this graph's batches to a bucket: an input whose first dimension is
    a fixed size, not the batch (dlrm's (26, rows) offsets); "" when every input leads with a
    dynamic dimension, or every one with 1 (a graph of batch 1, as the official ssd-resnet34's: its
    calls have one row, never padded: ``one_row``)."""
    if one_row(inputs):
        return ""
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_value:
            return f"input {value.name}'s first dimension is {dims[0].dim_value}, not the batch"
    return ""


def one_row(inputs: Sequence[onnx.ValueInfoProto]) -> bool:
    """Whether every input's first dimension is a fixed 1 (a graph of batch 1)."""
    firsts = [d[0].dim_value if (d := v.type.tensor_type.shape.dim) else 0 for v in inputs]
    return bool(firsts) and all(f == 1 for f in firsts)


def signature(batch: Sequence[np.ndarray], bucket: int) -> Signature:
    """What a CUDA graph is captured for: each input's shape with the batch padded to ``bucket``."""
    return tuple((bucket, *x.shape[1:]) for x in batch)


def graph_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """A graph input or output per sample: its first dimension (the batch) dropped, ``None`` for a
    named or unknown dimension; float tensors as float32 (what goes in and comes back)."""
    t = value.type.tensor_type
    dims = tuple(d.dim_value or None for d in t.shape.dim)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
    return TensorSpec(value.name, dims[1:], "float32" if dtype.kind == "f" else dtype.name)


def output_names(model_path: Path) -> list[str]:
    return [o.name for o in _load_proto(model_path, weights=False).graph.output]


def fits_image_path(model_path: Path, outputs: Sequence[str]) -> bool:
    """Whether the image path runs this graph: one float input of rank 4 (NCHW) and one output
    wanted (``outputs``, or every output of the graph when it names none)."""
    graph = _load_proto(model_path, weights=False).graph
    ins = graph_inputs(graph)
    if len(ins) != 1 or len(outputs or graph.output) != 1:
        return False
    t = ins[0].type.tensor_type
    return t.elem_type == onnx.TensorProto.FLOAT and len(t.shape.dim) == 4


# --- conversion -------------------------------------------------------------------------------
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
    kept count, the per-class cut), whatever the batch; ``limits`` (max per class, IoU, threshold)
    are the graph's constants read at conversion (``nms_limits``), else read at each call."""

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
        kept = nms(corners + (group * span)[:, None], scores[image, cls, box].double(), iou_bound)  # falling score
        kept = kept[torch.argsort(group[kept], stable=True)]  # by group, falling score within each
        if most < scores.shape[2]:  # a class can have more boxes kept than the cap
            in_group = group[kept]
            rank = torch.arange(len(kept), device=kept.device) - torch.searchsorted(in_group, in_group)
            kept = kept[rank < most]
        return torch.stack([image[kept], cls[kept], box[kept]], dim=1)


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


def _register_converters() -> None:
    from onnx2torch.node_converters.registry import add_converter, get_converter

    ours = {"LSTM": ((7, 14, 22), _lstm_converter), "Compress": ((9, 11), _compress_converter)}
    for op, (versions, converter) in ours.items():
        for version in versions:
            try:
                get_converter(op, version)
            except NotImplementedError:
                add_converter(op, version)(converter)


def _mappable(tensor: onnx.TensorProto) -> bool:
    """Whether numpy can map the tensor's bytes (not bfloat16, float8, strings)."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).kind in "biuf"


def _mapped_array(tensor: onnx.TensorProto) -> np.ndarray | None:
    """An external initializer whose location is absolute (``_map_external``) as a copy-on-write
    memory map of its bytes: nothing is read until used, and the pages go when the array does.
    None for any other (read as onnx2torch reads it)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL or not _mappable(tensor):
        return None
    info = {e.key: e.value for e in tensor.external_data}
    if not Path(info.get("location", "")).is_absolute():
        return None
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    shape = tuple(int(d) for d in tensor.dims)
    if not np.prod(shape, dtype=np.int64):
        return np.zeros(shape, dtype)
    return np.memmap(info["location"], dtype=dtype, mode="c", offset=int(info.get("offset", 0)), shape=shape)


def _register_mapped_tensors() -> None:
    """onnx2torch reads every initializer into memory and then copies it (``OnnxTensor.to_numpy``):
    for dlrm's tables, two host copies of 45 GiB before the backend's own copy to the device. Ours
    maps external ones instead (``_mapped_array``): a buffer stays a view of the file until moved to
    the device, a weight a module copies (a Linear's) is read once. Inline ones read as before."""
    from onnx2torch.onnx_tensor import OnnxTensor

    if getattr(OnnxTensor.to_numpy, "mapped", False):
        return
    read = OnnxTensor.to_numpy

    def to_numpy(self: Any) -> np.ndarray:
        mapped = _mapped_array(self.proto)
        return read(self) if mapped is None else mapped

    to_numpy.mapped = True  # type: ignore[attr-defined]
    OnnxTensor.to_numpy = to_numpy


def _map_external(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """A copy of ``proto`` (its external data not loaded) whose external initializers name their
    files by absolute path, so that ``_mapped_array`` maps them from anywhere; those numpy cannot
    map are read in (onnx refuses an absolute location)."""
    from onnx.external_data_helper import load_external_data_for_tensor

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for tensor in out.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location" and not (path.parent / entry.value).is_file():
                raise HarnessError(f"{path.name}: external data file {entry.value} of {tensor.name} is missing")
        if not _mappable(tensor):
            load_external_data_for_tensor(tensor, str(path.parent))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str((path.parent / entry.value).resolve())
    return out


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


def convert(proto: onnx.ModelProto, outputs: Sequence[str], path: Path) -> Any:
    """The graph as an fx.GraphModule that takes the inputs in graph order and returns exactly
    ``outputs`` as a tuple (what nothing asked for is not computed). ``proto`` is the graph of the
    file ``path``, its weights loaded or not. External initializers come memory-mapped
    (``_register_mapped_tensors``): moving the module to a device copies them one at a time, each
    mapping released before the next, so the host never holds them all (dlrm's 45 GiB of tables);
    on the CPU they stay mapped, their pages read as they are used. The GPU side is untested on a
    GPU (tests/harness/test_torch_external.py has its test, skipped without CUDA)."""
    from onnx2torch import convert as onnx2torch_convert
    from onnx2torch.onnx_graph import OnnxGraph

    _register_converters()
    _register_mapped_tensors()
    missing = missing_converters(proto)
    if missing:
        raise HarnessError(
            f"{path.name}: onnx2torch cannot convert {', '.join(missing)}; use backend onnxruntime for this model"
        )
    try:
        # The graph without its external data is small enough for onnx2torch's in-memory shape
        # inference (protobuf's limit is 2 GiB); the external tensors are mapped when converted.
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        model = onnx2torch_convert(_map_external(proto, path) if external else _load_proto(path))
    except NotImplementedError as exc:
        raise HarnessError(f"{path.name}: onnx2torch cannot convert it ({exc}); use backend onnxruntime") from None
    # onnx2torch returns whole nodes as outputs; the outputs are rebuilt by name instead.
    onnx_graph = OnnxGraph(proto.graph)
    graph = model.graph
    modules = {n.target: n for n in graph.nodes if n.op == "call_module"}
    names = [i.name for i in graph_inputs(proto.graph)]
    placeholders = dict(zip(names, (n for n in graph.nodes if n.op == "placeholder"), strict=True))
    [out] = [n for n in graph.nodes if n.op == "output"]
    picked = []
    with graph.inserting_before(out):
        for name in outputs:
            if name in placeholders:
                picked.append(placeholders[name])
                continue
            node, index = onnx_graph.value_as_node_output(name)
            fx_node = modules[node.unique_name]
            if len(node.output_values) > 1:
                fx_node = graph.call_function(operator.getitem, (fx_node, index))
            picked.append(fx_node)
    out.args = (tuple(picked),)
    for node in onnx_graph.nodes.values():
        if node.operation_type == "CumSum":  # onnx2torch 1.5 reads a missing `reverse` as 1; ONNX's default is 0
            model.get_submodule(node.unique_name).reverse = bool(node.attributes.get("reverse", 0))
        elif node.operation_type == "NonMaxSuppression" and not node.attributes.get("center_point_box", 0):
            model.set_submodule(node.unique_name, OnnxNMS())
        elif node.operation_type == "ConstantOfShape":
            model.set_submodule(node.unique_name, ConstantOfShape(model.get_submodule(node.unique_name).value))
        elif node.operation_type == "ScatterND":
            model.set_submodule(node.unique_name, ScatterND())
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats:
            model.set_submodule(name, InstanceNorm(m))
    graph.eliminate_dead_code()
    model.delete_all_unused_submodules()
    model.recompile()
    nms_limits(model)
    share_conditions(model)
    return model


def constant_gathers(model: Any) -> int:
    """Gathers of device data at one constant index (dlrm takes each table's column of the index
    matrix so) as ``select`` with a Python int: onnx2torch indexes with the 0-d tensor, which torch
    reads back to the host, one wait for the GPU per gather (26 per dlrm batch on an H200). Shape
    arithmetic is left to ``host_shape_arithmetic`` (run after this). Returns how many."""
    from onnx2torch.node_converters.gather import OnnxGather

    host = host_values(model)
    done = 0
    for node in list(model.graph.nodes):
        if node.op != "call_module" or node in host or not isinstance(model.get_submodule(node.target), OnnxGather):
            continue
        data, index = node.args
        if getattr(index, "op", "") != "get_attr":
            continue
        value = operator.attrgetter(index.target)(model)
        if value.dim() != 0:
            continue
        axis = model.get_submodule(node.target)._axis
        with model.graph.inserting_before(node):
            new = model.graph.call_function(torch.select, (data, axis, int(value)))
        node.replace_all_uses_with(new)
        model.graph.erase_node(node)
        done += 1
    return done


class Float32(nn.Module):
    """A module run on float32 copies of its float inputs."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        def f32(a: Any) -> Any:
            return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        return self.inner(*map(f32, args), **{k: f32(v) for k, v in kwargs.items()})


def _half(model: Any, dtype: Any) -> Any:
    """The model in ``dtype``: its casts to float32 too (an fp32 graph's casts mean 'to float'),
    non-max suppression in float32 (torchvision has no bf16 kernel for it)."""
    from onnx2torch.node_converters.cast import OnnxCast
    from onnx2torch.node_converters.nms import OnnxNonMaxSuppression

    for name, m in list(model.named_modules()):
        if isinstance(m, OnnxCast) and m.torch_dtype == torch.float32:
            m.torch_dtype = dtype
        elif isinstance(m, OnnxNonMaxSuppression | OnnxNMS):
            model.set_submodule(name, Float32(m))
    return model.to(dtype)


class Attention(nn.Module):
    """softmax(q @ k^T * scale (+ mask)) @ v as one fused kernel (scaled_dot_product_attention),
    from the graph's ``q``, ``k^T`` (as the ONNX graph transposes it), ``v`` and additive mask."""

    def __init__(self, scale: float, four_d: bool) -> None:
        super().__init__()
        self.scale = scale
        self.four_d = four_d  # the softmax was over axis 3: the last one of 4-D scores only

    def forward(self, q: Any, k_t: Any, v: Any, mask: Any = None) -> Any:
        if self.four_d and q.dim() != 4:
            raise RuntimeError(f"fused attention: 4-D q expected, got {q.dim()}-D; set MLPERF_TORCH_ATTENTION=0")
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        k = k_t.transpose(-2, -1)
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)


def fuse_attention(model: Any) -> int:
    """Rewrite each MatMul(q, k^T) -> Mul or Div by a constant -> (Add mask) -> Softmax over the
    last axis -> MatMul(v) of an onnx2torch graph (BERT's self-attention) into one ``Attention``:
    the (batch, heads, seq, seq) scores are then never written out. Returns how many."""
    from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
    from onnx2torch.node_converters.matmul import OnnxMatMul

    graph = model.graph

    def module(node: Any) -> Any:
        is_module = getattr(node, "op", None) == "call_module"
        return model.get_submodule(str(node.target)) if is_module else None

    def math(node: Any, *ops: str) -> bool:
        fn = getattr(module(node), "math_op_function", None)
        return fn is not None and any(fn.__name__ in (op, f"_onnx_{op}") for op in ops)

    def only_user(node: Any) -> Any:
        return next(iter(node.users)) if len(node.users) == 1 else None

    def scalar(node: Any) -> float | None:
        if getattr(node, "op", None) != "get_attr":
            return None
        value = model.get_buffer(str(node.target))
        return float(value) if value.numel() == 1 and value.is_floating_point() else None

    def softmax_axis(node: Any) -> int | None:
        m = module(node)
        if isinstance(m, OnnxSoftmaxV1V11) and not m.is_log:
            return int(m.axis)  # opset < 13 flattens from the axis: the last one for -1, or 3 of 4-D
        return int(m.dim) if isinstance(m, nn.Softmax) and m.dim is not None else None

    fused = 0
    for qk in list(graph.nodes):
        if not isinstance(module(qk), OnnxMatMul):
            continue
        scaled = only_user(qk)
        if scaled is None or not math(scaled, "mul", "div") or qk not in scaled.args:
            continue
        factor = scalar(scaled.args[1] if scaled.args[0] is qk else scaled.args[0])
        if not factor or (math(scaled, "div") and scaled.args[0] is not qk):
            continue
        scale = factor if math(scaled, "mul") else 1.0 / factor
        probs, mask = only_user(scaled), None
        if probs is not None and math(probs, "add"):
            a, b = probs.args
            mask = b if a is scaled else a
            probs = only_user(probs)
        axis = None if probs is None else softmax_axis(probs)
        if axis not in (-1, 3):
            continue
        ctx = only_user(probs)
        if ctx is None or not isinstance(module(ctx), OnnxMatMul) or ctx.args[0] is not probs:
            continue
        name = f"attention_{fused}"
        model.add_submodule(name, Attention(scale, four_d=axis == 3))
        q, k_t = qk.args
        with graph.inserting_before(ctx):
            new = graph.call_module(name, (q, k_t, ctx.args[1], *([mask] if mask is not None else [])))
        ctx.replace_all_uses_with(new)
        for dead in (ctx, probs, *([probs.args[0]] if mask is not None else []), scaled, qk):
            graph.erase_node(dead)
        fused += 1
    graph.lint()
    model.delete_all_unused_submodules()
    model.recompile()
    return fused


class HostShape(nn.Module):
    """ONNX Shape answered on the host (onnx2torch makes a device tensor of it, read back later)."""

    def __init__(self, shape: Any) -> None:
        super().__init__()
        self.start, self.end = shape._start, shape._end

    def forward(self, x: Any) -> Any:
        return torch.tensor(x.shape[self.start : self.end])


def _host_readers() -> dict[type, set[int | str]]:
    """onnx2torch modules that read these arguments as Python values (``tolist``, ``item``,
    iteration): a host tensor there costs nothing, a device one a wait for the GPU."""
    from onnx2torch.node_converters import cumsum, pad, reshape, slice, split, squeeze, topk, unsqueeze
    from onnx2torch.node_converters.range import OnnxRange

    return {
        topk.OnnxTopK: {1, "k"},
        cumsum.OnnxCumSum: {1, "axis"},
        ConstantOfShape: {0, "shape"},  # its output is on the device
        reshape.OnnxReshape: {1, "shape"},
        slice.OnnxSlice: {1, 2, 3, 4, "starts", "ends", "axes", "steps"},
        squeeze.OnnxSqueezeDynamicAxes: {1, "axes"},
        unsqueeze.OnnxUnsqueezeDynamicAxes: {1, "axes"},
        split.OnnxSplit13: {1, "split"},
        pad.OnnxPadDynamic: {1, "pads"},
        OnnxRange: {0, 1, 2, "start", "limit", "delta"},  # its output is on the device
    }


def host_values(model: Any) -> set[Any]:
    """The graph's shape arithmetic, to keep on the host for a model on a GPU: onnx2torch reads
    shapes, axes, starts and sizes back as Python values (one wait for the GPU each, and no CUDA
    graph capture). Shape's outputs and the small integer constants, and what is computed from
    them alone, wherever every use of the value is another such value or an argument read as
    Python values (``_host_readers``); the rest stays on the device."""
    from onnx2torch.node_converters import binary_math_operations, cast, concat, gather
    from onnx2torch.node_converters.range import OnnxRange
    from onnx2torch.node_converters.shape import OnnxShape

    readers = _host_readers()
    # Computed on the host when every input is there (Range and ConstantOfShape make device tensors).
    arithmetic = (gather.OnnxGather, concat.OnnxConcat, cast.OnnxCast, binary_math_operations.OnnxBinaryMathOperation)
    arithmetic += tuple(c for c in readers if c not in (OnnxRange, ConstantOfShape))

    def module(node: Any) -> Any:
        return model.get_submodule(str(node.target)) if node.op == "call_module" else None

    def attribute(node: Any) -> tuple[Any, str]:
        owner, _, name = str(node.target).rpartition(".")
        return model.get_submodule(owner), name

    def inputs_there(node: Any) -> bool:  # Shape reads only its input's shape
        return isinstance(module(node), OnnxShape | HostShape) or all(i in host for i in node.all_input_nodes)

    host: set[Any] = set()
    for node in model.graph.nodes:
        if node.op == "get_attr":
            value = getattr(*attribute(node))
            if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.numel() <= 64:
                host.add(node)
        elif isinstance(module(node), (OnnxShape, HostShape, *arithmetic)) and inputs_there(node):
            host.add(node)

    def read_on_host(value: Any, user: Any) -> bool:
        wanted = readers.get(type(module(user)), set())
        uses = [i for i, a in enumerate(user.args) if a is value] + [k for k, v in user.kwargs.items() if v is value]
        return all(u in wanted for u in uses)

    changed = True
    while changed:  # drop values some use needs on the device, and what is computed from those
        stays = {n for n in host if inputs_there(n)}
        stays = {n for n in stays if all(u in stays or read_on_host(n, u) for u in n.users)}
        changed, host = stays != host, stays
    return host


def host_shape_arithmetic(model: Any) -> int:
    """Move ``host_values`` to the host (on the CPU: nothing changes); returns how many."""
    from onnx2torch.node_converters.shape import OnnxShape

    host = host_values(model)
    for node in host:
        if node.op == "get_attr":
            owner, _, name = str(node.target).rpartition(".")
            setattr(model.get_submodule(owner), name, getattr(model.get_submodule(owner), name).cpu())
        elif node.op == "call_module" and isinstance(shape := model.get_submodule(str(node.target)), OnnxShape):
            model.set_submodule(str(node.target), HostShape(shape))
    return len(host)


# --- split capture: a CUDA graph up to the first wait, the rest eagerly --------------------------
@contextmanager
def gpu_waits() -> Iterator[None]:
    """Within: an operation that waits for the GPU raises (torch's sync debug mode)."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


WAITING_OPS = (  # a value read back, or an output sized by the data
    *("aten.nonzero", "aten.masked_select", "aten._unique", "aten.unique", "aten._local_scalar_dense", "aten.item"),
    *("aten.is_nonzero", "aten.equal", "aten.repeat_interleave.Tensor", "torchvision.nms"),
)


class WouldWait(TorchDispatchMode):
    """The CPU's stand-in for ``gpu_waits`` (tests and counts, through ``_run_waiting``; no GPU path
    uses it): ``on_wait(op, args)`` at each operation that waits for a GPU where its tensors are on
    one: a value read back (item, a tensor as a Python number or bool), an output sized by the data
    (nonzero, a boolean mask's selection, unique, NMS). The default raises. Not seen at this level:
    ``tolist`` (a list read back), and whether a value read lives on the host on a GPU."""

    def __init__(self, on_wait: Callable[[str, Any], None] | None = None) -> None:
        super().__init__()
        self.on_wait = on_wait or self._raise

    @staticmethod
    def _raise(op: str, args: Any) -> None:
        raise RuntimeError(f"{op} would wait for the GPU")

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        op = str(func)
        indices = list(args[1]) if op.startswith(("aten.index.", "aten.index_put")) else []
        masks = any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
        if masks or op.startswith(WAITING_OPS):
            self.on_wait(op, args)
        return func(*args, **(kwargs or {}))


def _run_waiting(model: Any, inputs: Sequence[Any], on_wait: Callable[[Any, str], None]) -> None:
    """Run ``model`` on the CPU, ``on_wait(node, op)`` at each wait a GPU would have (``WouldWait``
    and ``tolist``) but for reads of the values a GPU keeps on the host (``host_values``): those
    inside such a node, or a node whose arguments read as Python values (``_host_readers``) all are."""
    from torch.overrides import TorchFunctionMode

    host, readers = host_values(model), _host_readers()
    current: list[Any] = [None]

    def reads_host(node: Any) -> bool:
        module = model.get_submodule(str(node.target)) if node.op == "call_module" else None
        wanted = readers.get(type(module))
        if wanted is None:
            return False
        args = [a for i, a in enumerate(node.args) if i in wanted] + [v for k, v in node.kwargs.items() if k in wanted]
        return all(a in host for a in args if isinstance(a, torch.fx.Node))

    def wait(op: str, args: Any) -> None:
        read = op.startswith(("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal", "tolist"))
        if not read or not (current[0] in host or reads_host(current[0])):
            on_wait(current[0], op)

    class Lists(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func is torch.Tensor.tolist:
                wait("tolist", args)
            return func(*args, **(kwargs or {}))

    class Tracker(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            current[0] = n
            return super().run_node(n)

    with torch.inference_mode(), Lists(), WouldWait(wait):
        Tracker(model).run(*inputs)


def count_waits(model: Any, inputs: Sequence[Any]) -> dict[str, int]:
    """The waits for the GPU a call of ``model`` would have, per node, counted on the CPU
    (``_run_waiting``). An estimate for tests and reports (a library's own waits inside an op, as
    NMS's, count as one; a node's reads as many as it makes, host values among them or not); on a
    GPU, torch's sync debug mode counts them."""
    counts: dict[str, int] = {}

    def count(node: Any, op: str) -> None:
        counts[node.name] = counts.get(node.name, 0) + 1

    _run_waiting(model, inputs, count)
    return counts


def first_wait(model: Any, inputs: Sequence[Any], detect: Any = None) -> tuple[str, str]:
    """The node of ``model`` (an fx.GraphModule) during which a call on ``inputs`` first waits for
    the GPU, and the wait's message; ("", "") where none does. ``detect``: a context in which a wait
    raises (``gpu_waits()``); None: on the CPU, what would wait on a GPU (``_run_waiting``)."""
    current = [""]

    def stop(node: Any, op: str) -> None:
        current[0] = node.name
        raise RuntimeError(f"{op} would wait for the GPU")

    class Tracker(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            current[0] = n.name
            return super().run_node(n)

    try:
        if detect is None:
            _run_waiting(model, inputs, stop)
        else:
            with detect:
                Tracker(model).run(*inputs)
    except RuntimeError as exc:
        return current[0], str(exc).splitlines()[0][:160]
    return "", ""


@dataclass
class Split:
    """A graph cut before ``at``, its first node that waits for the GPU: ``prefix`` (the graph's
    inputs -> the values the rest uses) is captured in CUDA graphs, ``suffix`` (those values -> the
    graph's outputs) runs eagerly; ``ops``: how many operations each has."""

    prefix: Any
    suffix: Any
    at: str
    ops: tuple[int, int]

    def describe(self) -> str:
        return f"CUDA graph up to {self.at} ({self.ops[0]} ops), eagerly from there ({self.ops[1]} ops)"


def split_at(model: Any, name: str) -> Split | None:
    """``model`` cut before its node ``name``: the prefix is every node before it in the graph's
    order (none of them ran into a wait before it), returning the values that later nodes use
    (constants are read in the suffix itself); None where no operation comes before it."""
    nodes = list(model.graph.nodes)
    cut = next(i for i, n in enumerate(nodes) if n.name == name)
    before = set(nodes[:cut])

    def ops(part: Sequence[Any]) -> int:
        return sum(n.op in ("call_module", "call_function", "call_method") for n in part)

    if not ops(nodes[:cut]):
        return None
    carried = [n for n in nodes[:cut] if n.op != "get_attr" and any(u not in before for u in n.users)]
    prefix = torch.fx.Graph()
    env: dict[Any, Any] = {}
    for n in nodes[:cut]:
        env[n] = prefix.node_copy(n, env.__getitem__)
    prefix.output(tuple(env[n] for n in carried))
    suffix = torch.fx.Graph()
    env = {n: suffix.placeholder(n.name) for n in carried}
    for n in nodes[cut:]:
        for arg in n.all_input_nodes:
            if arg not in env:  # a constant before the cut
                env[arg] = suffix.node_copy(arg, env.__getitem__)
        env[n] = suffix.node_copy(n, env.__getitem__)
    head, tail = torch.fx.GraphModule(model, prefix), torch.fx.GraphModule(model, suffix)
    head.graph.eliminate_dead_code()  # nodes that only the rest used
    head.delete_all_unused_submodules()
    head.recompile()
    return Split(head, tail, name, (ops(list(head.graph.nodes)), ops(nodes[cut:])))


def batch_rows(prefix: Any, inputs: Sequence[Any]) -> tuple[bool | None, ...]:
    """How each of the prefix's outputs follows the batch, from the prefix run on one row and on two
    of the inputs' first row: True, it leads with the batch (a padded batch's are cut to its rows
    before the suffix); False, the same for any batch; None, it differs otherwise (a padded batch
    would change it: batches are then not padded)."""
    one = prefix(*(x[:1] for x in inputs))
    two = prefix(*(torch.cat([x[:1], x[:1]]) for x in inputs))
    rows: list[bool | None] = []
    for a, b in zip(one, two, strict=True):
        tensors = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        if tensors and a.dim() and (len(a), len(b)) == (1, 2) and a.shape[1:] == b.shape[1:]:
            rows.append(True)
        elif torch.equal(a, b) if tensors else isinstance(a, int | float | bool) and a == b:
            rows.append(False)
        else:
            rows.append(None)
    return tuple(rows)


# --- the backend ------------------------------------------------------------------------------
def memory_figures(dev: Any) -> dict[str, int]:
    """Memory after a load, in bytes: the process's peak resident set so far (``ru_maxrss``: the
    most it held at once, mapped file pages included, whatever loaded it) and its resident set now;
    on a GPU, what torch's allocator holds on the device and the most it held (every instance of
    the process on that device together). The GPU figures are untested on a GPU."""
    import resource

    figures = {"hostPeakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    with contextlib.suppress(OSError, ValueError, IndexError):  # Linux: resident pages, the second field
        figures["hostRssBytes"] = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if dev is not None and dev.type == "cuda":
        figures["deviceAllocatedBytes"] = int(torch.cuda.memory_allocated(dev))
        figures["devicePeakBytes"] = int(torch.cuda.max_memory_allocated(dev))
    return figures


def conv_layout(model: Any, inputs: Sequence[TensorSpec]) -> tuple[int, dict[str, Any]]:
    """A convolutional model on a GPU: channels-last weights (NHWC, or NDHWC for 3-D convolutions:
    cuDNN's fast kernels are channels-last, and on NCHW tensors it transposes around each
    convolution, 25 % of ssd-resnet34's GPU time on an H200), its 2-D conv + bias + ReLU fused into
    one cuDNN call where the image path's rewrites allow (``MLPERF_TORCH_REWRITES``). Returns the
    convolutions fused and the memory format of each float input of the convolutions' rank.
    ``MLPERF_TORCH_CHANNELS_LAST=0`` leaves the layout as it is (to compare)."""
    from .torch_backend import fuse_conv_activations, rewrites_from_env

    ranks = {m.weight.dim() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)}
    rewrites = rewrites_from_env()
    fused = 0
    if ranks == {4} and "fuse" in rewrites and isinstance(model, torch.fx.GraphModule):
        fused = fuse_conv_activations(model, fold_bias="fold" in rewrites)[0]
    if len(ranks) != 1 or os.environ.get("MLPERF_TORCH_CHANNELS_LAST", "1") == "0":
        return fused, {}
    [rank] = ranks
    fmt = torch.channels_last if rank == 4 else torch.channels_last_3d
    model.to(memory_format=fmt)
    formats = {s.name: fmt for s in inputs if len(s.shape) + 1 == rank and np.dtype(s.dtype).kind == "f"}
    return fused, formats


class TorchGraphBackend(ModelBackend):
    """Load with ``load(path, batch_size, precision, outputs=[...])``, run ``predict(feeds)``; a
    model of several parts (rnnt) is one instance per part, as the SUT loads it."""

    name = "pytorch"

    def __init__(self, use_graphs: bool | None = None) -> None:
        # MLPERF_TORCH_GRAPHS=0: no CUDA graphs; MLPERF_TORCH_ATTENTION=0: attention unfused (to compare).
        self.use_graphs = use_graphs if use_graphs is not None else os.environ.get("MLPERF_TORCH_GRAPHS", "1") != "0"
        self.fuse_attention = os.environ.get("MLPERF_TORCH_ATTENTION", "1") != "0"
        self.attention = 0  # attention blocks fused (on a GPU)
        self.on_host = 0  # values of the shape arithmetic kept on the host (on a GPU)
        self.eager_reason = ""  # why the graph, or its part from its first wait (``split``), runs eagerly on a GPU
        # MLPERF_TORCH_SPLIT=0: a graph that waits for the GPU runs wholly eagerly (no split capture).
        self.split_graphs = os.environ.get("MLPERF_TORCH_SPLIT", "1") != "0"
        self.split: Split | None = None  # the graph cut at its first wait: its prefix captured (on a GPU)
        self._rows: tuple[bool, ...] = ()  # which of the prefix's outputs lead with the batch
        self._pad = True  # batches padded to their bucket (not where a prefix output depends on the batch size)
        self.fused = 0  # convolutions fused with their bias and ReLU (on a GPU)
        self.gathers = 0  # gathers at a constant index made selects (on a GPU)
        self._formats: dict[str, Any] = {}  # input -> its memory format on the GPU (channels-last)
        self._file = ""
        self._model: Any = None
        self._dev: Any = None
        self._dtype: Any = None
        self._names: list[str] = []
        self._batch = 1
        self._dynamic = False  # a dimension past the batch varies (the graph's inputs or outputs)
        self._one_row = False  # every input's first dimension is 1 (the official ssd-resnet34's)
        self.graphed = False  # CUDA graphs per input-shape signature (on a GPU)
        self.max_graphs = MAX_GRAPHS
        self.eager_shapes = 0  # calls run eagerly because every graph slot was taken
        self._graphs: dict[Signature, Captured] = {}
        self._pinned: dict[str, Any] = {}
        self._stream: Any = None
        self._capture_stream: Any = None
        self.memory: dict[str, int] = {}  # memory_figures after the load

    @classmethod
    def version(cls) -> str:
        return str(_torch().__version__)

    @property
    def on_gpu(self) -> bool:
        return self._dev is not None and self._dev.type == "cuda"

    def load(self, model_path: Path, batch_size: int, precision: str, *, outputs: Sequence[str] = ()) -> None:
        if not model_path.is_file():
            raise HarnessError(f"{model_path}: missing model file")
        proto = _load_proto(model_path, weights=False)  # the weights come with the conversion, from the file
        self._file = model_path.name
        specs = {o.name: graph_spec(o) for o in proto.graph.output}
        self._names = pick_outputs(list(specs), outputs, model_path.name)
        self._ins = tuple(graph_spec(i) for i in graph_inputs(proto.graph))
        self._outs = tuple(specs[n] for n in self._names)
        self._dev, self._dtype = torch_device(self.device_index, precision)
        self._batch = batch_size
        model = convert(proto, self._names, model_path).eval().to(self._dev)
        if self.on_gpu:
            self.gathers = constant_gathers(model)
            self.on_host = host_shape_arithmetic(model)
            if self.fuse_attention:
                self.attention = fuse_attention(model)
        if self._dtype != torch.float32:
            model = _half(model, self._dtype)
        if self.on_gpu:
            self.fused, self._formats = conv_layout(model, self._ins)
        for m in model.modules():
            if isinstance(m, nn.RNNBase):
                m.flatten_parameters()  # cuDNN's RNN takes its weights as one block
        self._model = model
        self._dynamic = any(s.ragged for s in (*self._ins, *self._outs))
        self._one_row = one_row(graph_inputs(proto.graph))  # its calls take one row: graphs of batch 1 only
        if self.on_gpu and self.use_graphs:
            # Dynamic dimensions get a graph per shape their batches have, when the batch leads.
            self.eager_reason = batch_axis_reason(graph_inputs(proto.graph)) if self._dynamic else ""
        self.graphed = self.on_gpu and self.use_graphs and not self.eager_reason
        if self.on_gpu:
            self._stream = torch.cuda.Stream(device=self._dev)
            self._capture_stream = torch.cuda.Stream(device=self._dev)
        self.memory = memory_figures(self._dev)

    # --- host buffers -------------------------------------------------------------------------
    def _host(self, key: str, shape: Sequence[int], dtype: Any) -> Any:
        """A pinned host tensor of ``shape``, from a buffer kept per key (grown when too small)."""
        need = int(np.prod(shape))
        buf = self._pinned.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < need:
            buf = torch.empty(max(need, 1), dtype=dtype).pin_memory()
            self._pinned[key] = buf
        return buf[:need].view(tuple(shape))

    def _upload(self, spec: TensorSpec, batch: np.ndarray, into: Any = None) -> Any:
        """One input on the device (via a pinned buffer, copied on this stream), float ones in the
        run's dtype; into ``into`` (a graph's static input, rows past the batch zeroed) if given."""
        x = torch.from_numpy(np.ascontiguousarray(batch))
        dtype = self._dtype if x.is_floating_point() else x.dtype
        if not self.on_gpu:
            return x.to(dtype)
        shape = tuple(into.shape) if into is not None else tuple(x.shape)
        pinned = self._host(f"in:{spec.name}", shape, dtype if into is None else into.dtype)
        pinned[: len(x)].copy_(x)
        if len(x) < len(pinned):
            pinned[len(x) :].zero_()
        if into is None:
            x = pinned.to(self._dev, non_blocking=True)
            fmt = self._formats.get(spec.name)
            return x if fmt is None else x.contiguous(memory_format=fmt)
        return into.copy_(pinned, non_blocking=True)

    def _feeds(self, feeds: Mapping[str, Any]) -> list[Any]:
        missing = [s.name for s in self._ins if s.name not in feeds]
        if missing:
            names = ", ".join(s.name for s in self._ins)
            raise HarnessError(f"{self._file}: no feed for input {', '.join(missing)} (inputs: {names})")
        return [feeds[s.name] for s in self._ins]

    # --- inference ----------------------------------------------------------------------------
    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]:
        assert self._model is not None, "load() first"
        batch = self._feeds(feeds)
        n = len(batch[0])
        if not self.on_gpu:
            with torch.inference_mode():
                outs = self._model(*(self._upload(s, b) for s, b in zip(self._ins, batch, strict=True)))
            return {name: _numpy(o) for name, o in zip(self._names, outs, strict=True)}
        with torch.cuda.device(self._dev), torch.cuda.stream(self._stream), torch.inference_mode():
            bucket = batch_bucket(n, self._batch) if self._pad else n
            captured = self._graph_for(signature(batch, bucket)) if self.graphed else None
            if captured is not None and (self._pad or len(captured[1][0]) == n):  # the first capture may stop padding
                graph, static_in, static_out = captured
                for s, b, x in zip(self._ins, batch, static_in, strict=True):
                    self._upload(s, b, x)
                graph.replay()
                if self.split is None:
                    outs = tuple(o[:n] for o in static_out)
                else:  # the rest of the graph, eagerly on the prefix's outputs (before the next replay)
                    outs = self.split.suffix(*(o[:n] if r else o for o, r in zip(static_out, self._rows, strict=True)))
            else:
                outs = self._model(*(self._upload(s, b) for s, b in zip(self._ins, batch, strict=True)))
            host = [self._host(f"out:{i}", o.shape, o.dtype).copy_(o, non_blocking=True) for i, o in enumerate(outs)]
            done = torch.cuda.Event()
            done.record(self._stream)
        done.synchronize()
        # The pinned buffers are this instance's next batch's (a decoder keeps outputs): an fp16/bf16
        # output's float32 conversion is a new array already, any other is copied out (3d-unet's
        # patches are 200 MB a batch: one copy fewer).
        return {
            name: _numpy(h) if h.dtype in (torch.float16, torch.bfloat16) else np.array(_numpy(h))
            for name, h in zip(self._names, host, strict=True)
        }

    def _graph_for(self, key: Signature) -> Captured | None:
        """The CUDA graph of an input-shape signature, captured at its first batch while fewer than
        ``max_graphs`` exist; None: run this call eagerly (every slot taken: ``eager_shapes``
        counts those calls), or every call from now on (``_capture`` found the model waiting for
        the GPU: ``eager_reason``)."""
        got = self._graphs.get(key)
        if got is not None:
            return got
        if len(self._graphs) >= self.max_graphs:
            if not self.eager_shapes:
                sys.stderr.write(f"pytorch: {self._file}: {self.max_graphs} CUDA graphs; new shapes run eagerly\n")
            self.eager_shapes += 1
            return None
        captured = self._capture(key)
        if captured is None:
            self.graphed = False
            sys.stderr.write(f"pytorch: {self._file}: no CUDA graphs ({self.eager_reason}); running eagerly\n")
            return None
        self._graphs[key] = captured
        return captured

    def _capture(self, key: Signature) -> Captured | None:
        """A CUDA graph of the model on static inputs of the shapes ``key``, captured on this
        instance's own stream. The first capture checks whether a call waits for the GPU: if it does,
        the graph is cut before the first wait (``split``: its prefix captured, the rest run eagerly
        on the prefix's outputs), or, with ``MLPERF_TORCH_SPLIT=0`` or too little before the wait,
        None from now on, ``eager_reason`` set. Untested on a GPU: shapes other than a batch bucket of
        fixed shapes, and the split capture (its parts are tested on the CPU)."""
        static_in = []
        for s, shape in zip(self._ins, key, strict=True):
            dtype = np.dtype(s.dtype)
            # Random floats, not zeros: cuDNN picks its kernels on real data; ints 0 (a valid index).
            x = torch.randn(shape, device=self._dev) if dtype.kind == "f" else torch.zeros(shape, device=self._dev)
            x = x.to(self._dtype if dtype.kind == "f" else getattr(torch, dtype.name))
            fmt = self._formats.get(s.name)
            static_in.append(x if fmt is None else x.contiguous(memory_format=fmt))
        with torch.cuda.device(self._dev), torch.inference_mode():
            side = torch.cuda.Stream(device=self._dev)
            side.wait_stream(torch.cuda.current_stream(self._dev))
            with torch.cuda.stream(side):
                for _ in range(3):  # cuDNN's choices and allocations happen outside the graph
                    (self.split.prefix if self.split else self._model)(*static_in)
                # Checked at the first capture (the warm-up's, on the loading thread): the check sets a
                # process-wide mode that a later capture, during the run, would impose on other instances.
                if not self._graphs and self.split is None:
                    self._check_waits(static_in)
            torch.cuda.current_stream(self._dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            run = self.split.prefix if self.split else self._model
            try:
                if not self.eager_reason or self.split:
                    # thread_local: a capture during the run must not fail other instances' threads.
                    with torch.cuda.graph(graph, stream=self._capture_stream, capture_error_mode="thread_local"):
                        static_out = tuple(run(*static_in))
            except RuntimeError as exc:  # an op the check did not see (the capture says which)
                self.split = None
                self.eager_reason = f"capture failed: {str(exc).splitlines()[0][:160]}"
        return None if self.eager_reason and not self.split else (graph, static_in, static_out)

    def _check_waits(self, static_in: Sequence[Any]) -> None:
        """Whether a call waits for the GPU; where it does, the split (``MLPERF_TORCH_SPLIT``; where
        the part before the first wait has at least as many ops as the rest) or ``eager_reason``,
        said on stderr with what is graphed and what is not. On the CPU (tests), what would wait on
        a GPU."""
        at, wait = first_wait(self._model, static_in, gpu_waits() if self.on_gpu else None)
        if not at:
            return
        split = split_at(self._model, at) if self.split_graphs else None
        if split is None or split.ops[0] < split.ops[1]:
            # A prefix of fewer ops than the rest (rnnt's encoder waits at its LSTM) saves less than
            # its captures, one per shape, cost.
            self.eager_reason = wait if split is None else f"{wait} (after {split.ops[0]} of {sum(split.ops)} ops)"
            return
        for _ in range(3):  # the prefix alone: cuDNN's choices for the capture
            split.prefix(*static_in)
        rows = batch_rows(split.prefix, static_in)
        self.split, self._rows, self._pad = split, tuple(r is True for r in rows), None not in rows
        self.eager_reason = f"{split.describe()}: {wait}" + ("" if self._pad else "; batches not padded")
        sys.stderr.write(f"pytorch: {self._file}: {self.eager_reason}\n")

    # --- device tensors: a caller's own loop on the device -------------------------------------
    def tensor_device(self) -> tuple[Any, Any] | None:
        return None if self._model is None else (self._dev, self._dtype)

    def predict_tensors(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """The model on torch tensors on this instance's device (float ones cast to its dtype), the
        outputs left there: on the caller's current stream, no copy and no wait, so that a caller
        can capture its loop (model calls and all) in one CUDA graph of its own."""
        assert self._model is not None, "load() first"
        ins = []
        for s, x in zip(self._ins, self._feeds(feeds), strict=True):
            x = x.to(self._dtype) if x.is_floating_point() else x
            fmt = self._formats.get(s.name)
            ins.append(x if fmt is None else x.contiguous(memory_format=fmt))
        with torch.inference_mode():
            outs = self._model(*ins)
        return dict(zip(self._names, outs, strict=True))

    def warmup(self, feeds: Tensors, rounds: int = 2) -> None:
        """With CUDA graphs, capture the warm-up batch's shapes at every batch bucket now (on the
        loading thread, before the timed run); a model whose inputs have dynamic dimensions, whose
        batches come in other shapes (a benchmark's sequence buckets), only at the warm-up batch's
        own bucket: that finds a model that cannot be captured, and its batches' shapes are
        captured at their first batch. Otherwise run the feeds."""
        batch = self._feeds(feeds)
        buckets = {1} if self._one_row else {batch_bucket(k, self._batch) for k in range(1, self._batch + 1)}
        ragged = any(s.ragged for s in self._ins)  # ssd's ragged outputs come from a prefix of fixed shapes
        for n in [batch_bucket(len(batch[0]), self._batch)] if ragged else sorted(buckets):
            if not self.graphed or self._graph_for(signature(batch, n)) is None:
                break
        if not self.graphed:
            super().warmup(feeds, rounds)

    def close(self) -> None:
        self._graphs.clear()
        self._pinned.clear()

    def device(self) -> str:
        if self.on_gpu:
            return f"{self._dev} {torch.cuda.get_device_name(self._dev)}"
        return "cpu"
