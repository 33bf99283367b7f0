"""Rewrites of a converted graph (an fx.GraphModule from ``torch_graph.convert``): on a GPU, dlrm's
table lookups as one gather (``fuse_lookups``, before the model moves there), a gather
at a constant index as a select, the shape arithmetic kept on the host (onnx2torch reads shapes,
axes and sizes back as Python values: ``host_shape_arithmetic``), BERT's attention fused
(``fuse_attention``), convolutions channels-last (``conv_layout``); at fp16/bf16, the model in that
dtype (``half``). The CPU tests compare each with the graph; which ran on an H200: torch_graph's
docstring.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import TensorSpec
from .torch_ops import ConstantOfShape, OnnxNMS


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


class Lookups(nn.Module):
    """Several tables' row lookups as one gather: the tables as one (rows, width) tensor, each
    table's first row in ``starts``; called with the index matrix (indices, N), it returns
    (tables, N, width), table k's rows looked up with row ``picks[k]`` of the matrix."""

    def __init__(self, table: Any, starts: Any, picks: Any) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.register_buffer("starts", starts.reshape(-1, 1))
        self.register_buffer("picks", picks)  # None: the matrix's rows in order, one per table
        self.width = int(table.shape[1])

    def forward(self, ids: Any) -> Any:
        rows = ids if self.picks is None else ids.index_select(0, self.picks)
        found = self.table.index_select(0, (rows + self.starts).reshape(-1))
        return found.view(len(self.starts), -1, self.width)


def fuse_lookups(model: Any, device: Any) -> int:
    """dlrm's 26 table lookups (a gather of each table at the ids its row of the index matrix
    holds, each a kernel of its own: 26 % of a batch's GPU time on an H200) as one gather from
    the tables laid end to end (``Lookups``), built on ``device`` a table at a time, each table's
    own tensor dropped as it is copied: run before the model moves to the device, the tables
    (memory-mapped there) are read once and held once. Returns how many lookups were fused."""
    from onnx2torch.node_converters.gather import OnnxGather

    graph = model.graph

    def gather(node: Any) -> bool:
        return (
            getattr(node, "op", "") == "call_module"
            and isinstance(model.get_submodule(node.target), OnnxGather)
            and model.get_submodule(node.target)._axis == 0
        )

    groups: dict[Any, list[tuple[Any, Any, int]]] = {}  # the index matrix -> (lookup, table, its row)
    for node in graph.nodes:
        if not gather(node) or getattr(node.args[0], "op", "") != "get_attr" or not gather(node.args[1]):
            continue
        if len(node.args[0].users) != 1:  # a table read elsewhere too keeps its own tensor
            continue
        table, (matrix, row) = operator.attrgetter(node.args[0].target)(model), node.args[1].args
        if table.dim() == 2 and getattr(row, "op", "") == "get_attr":
            pick = operator.attrgetter(row.target)(model)
            if pick.dim() == 0:
                groups.setdefault(matrix, []).append((node, node.args[0], int(pick)))
    done = 0
    for matrix, found in groups.items():
        tables = [operator.attrgetter(t.target)(model) for _, t, _ in found]
        if len(found) < 2 or len({(t.dtype, t.shape[1]) for t in tables}) != 1:
            continue
        sizes, (dtype, width) = [len(t) for t in tables], (tables[0].dtype, int(tables[0].shape[1]))
        del tables
        big = torch.empty((sum(sizes), width), dtype=dtype, device=device)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for (_, table_node, _), start, rows in zip(found, starts.tolist(), sizes, strict=True):
            owner, _, name = str(table_node.target).rpartition(".")
            big[start : start + rows].copy_(getattr(model.get_submodule(owner), name))
            delattr(model.get_submodule(owner), name)  # the table's own tensor (a file map on the host) goes
        picks = [pick for _, _, pick in found]
        order = None if picks == list(range(len(picks))) else torch.tensor(picks, device=device)
        name = f"lookups_{done}"
        model.add_submodule(name, Lookups(big, torch.tensor(starts, device=device), order))
        with graph.inserting_after(matrix):
            call = graph.call_module(name, (matrix,))
        for k, (node, table_node, _) in enumerate(found):
            with graph.inserting_before(node):
                node.replace_all_uses_with(graph.call_function(torch.select, (call, 0, k)))
            graph.erase_node(node)
            graph.erase_node(table_node)  # its one reader gone (above), as its tensor
        done += len(found)
    if done:
        graph.eliminate_dead_code()
        model.recompile()
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


def half(model: Any, dtype: Any) -> Any:
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


class _Nodes:
    """Questions the fusing rewrites ask of an onnx2torch graph's nodes."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def module(self, node: Any) -> Any:
        is_module = getattr(node, "op", None) == "call_module"
        return self.model.get_submodule(str(node.target)) if is_module else None

    def math(self, node: Any, *ops: str) -> bool:
        """An elementwise binary op (onnx2torch's ``OnnxBinaryMathOperation``) of one of ``ops``."""
        fn = getattr(self.module(node), "math_op_function", None)
        return fn is not None and any(fn.__name__ in (op, f"_onnx_{op}") for op in ops)

    def constant(self, node: Any) -> Any:
        """The tensor an initializer (``get_attr``) or a Constant node (PyTorch's exports write
        scalars so) gives, else None."""
        from onnx2torch.node_converters.constant import OnnxConstant

        if getattr(node, "op", None) == "get_attr":
            value = operator.attrgetter(str(node.target))(self.model)
        else:
            value = getattr(self.module(node), "value", None) if isinstance(self.module(node), OnnxConstant) else None
        return value if isinstance(value, torch.Tensor) else None

    def scalar(self, node: Any) -> float | None:
        value = self.constant(node)
        ok = value is not None and value.numel() == 1 and value.is_floating_point()
        return float(value) if ok else None

    @staticmethod
    def only_user(node: Any) -> Any:
        return next(iter(node.users)) if len(node.users) == 1 else None

    @staticmethod
    def other(node: Any, one: Any) -> Any:
        """A binary node's argument beside ``one``."""
        a, b = node.args[:2]
        return b if a is one else a if b is one else None

    def drop_unused_constants(self) -> None:
        """The initializers no node reads any more (what a fusion replaced), removed from the model."""
        graph = self.model.graph
        for node in list(graph.nodes):
            if node.op == "get_attr" and not node.users:
                owner, _, name = str(node.target).rpartition(".")
                graph.erase_node(node)
                if not any(n.op == "get_attr" and n.target == node.target for n in graph.nodes):
                    delattr(self.model.get_submodule(owner), name)

    def finish(self) -> None:
        """After a fusion: the constants it left unread dropped, the graph checked and recompiled."""
        self.drop_unused_constants()
        self.model.graph.lint()
        self.model.delete_all_unused_submodules()
        self.model.recompile()


def fuse_attention(model: Any) -> int:
    """Rewrite each MatMul(q, k^T) -> Mul or Div by a constant -> (Add mask) -> Softmax over the
    last axis -> MatMul(v) of an onnx2torch graph (BERT's self-attention) into one ``Attention``:
    the (batch, heads, seq, seq) scores are then never written out. Returns how many."""
    from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
    from onnx2torch.node_converters.matmul import OnnxMatMul

    graph = model.graph
    g = _Nodes(model)

    def softmax_axis(node: Any) -> int | None:
        m = g.module(node)
        if isinstance(m, OnnxSoftmaxV1V11) and not m.is_log:
            return int(m.axis)  # opset < 13 flattens from the axis: the last one for -1, or 3 of 4-D
        return int(m.dim) if isinstance(m, nn.Softmax) and m.dim is not None else None

    fused = 0
    for qk in list(graph.nodes):
        if not isinstance(g.module(qk), OnnxMatMul):
            continue
        scaled = g.only_user(qk)
        if scaled is None or not g.math(scaled, "mul", "div") or qk not in scaled.args:
            continue
        factor = g.scalar(g.other(scaled, qk))
        if not factor or (g.math(scaled, "div") and scaled.args[0] is not qk):
            continue
        scale = factor if g.math(scaled, "mul") else 1.0 / factor
        probs, mask = g.only_user(scaled), None
        if probs is not None and g.math(probs, "add"):
            mask = g.other(probs, scaled)
            probs = g.only_user(probs)
        axis = None if probs is None else softmax_axis(probs)
        if axis not in (-1, 3):
            continue
        ctx = g.only_user(probs)
        if ctx is None or not isinstance(g.module(ctx), OnnxMatMul) or ctx.args[0] is not probs:
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
    g.finish()
    return fused


def fuse_linear(model: Any) -> int:
    """Each MatMul by a constant 2-D weight whose one use adds a constant bias (BERT's dense layers,
    as TensorFlow's export and the synthetic builder write them) as one ``nn.Linear``: cuBLASLt adds
    the bias in the GEMM's epilogue instead of a pass of its own over the output (those adds were
    29 % of bert's GPU time on an H200). Returns how many."""
    from onnx2torch.node_converters.matmul import OnnxMatMul

    graph = model.graph
    g = _Nodes(model)
    fused = 0
    for mm in list(graph.nodes):
        if not isinstance(g.module(mm), OnnxMatMul):
            continue
        x, w = mm.args[0], g.constant(mm.args[1])
        add = g.only_user(mm)
        if w is None or w.dim() != 2 or not w.is_floating_point() or add is None or not g.math(add, "add"):
            continue
        b = g.constant(g.other(add, mm))
        if b is None or tuple(b.shape) != (w.shape[1],) or b.dtype != w.dtype:
            continue
        linear = nn.Linear(w.shape[0], w.shape[1], device=w.device, dtype=w.dtype).requires_grad_(False)
        linear.weight.copy_(w.t())  # (out, in): x @ w = linear(x)
        linear.bias.copy_(b)
        name = f"linear_{fused}"
        model.add_submodule(name, linear)
        with graph.inserting_before(add):
            new = graph.call_module(name, (x,))
        add.replace_all_uses_with(new)
        graph.erase_node(add)
        graph.erase_node(mm)
        fused += 1
    g.finish()  # the weights now held transposed by the Linear layers, not twice
    return fused


def fuse_gelu(model: Any) -> int:
    """Each GELU written out in its erf form, x * 0.5 * (1 + erf(x / sqrt(2))) in any of the orders
    exports give it (BERT's feed-forward layers), as one ``gelu`` kernel instead of five passes over
    the layer's widest activations. Returns how many."""
    from onnx2torch.node_converters.activations import OnnxErf

    graph = model.graph
    g = _Nodes(model)

    def near(node: Any, value: float) -> bool:
        c = g.scalar(node)
        return c is not None and abs(c - value) < 1e-3 * value

    def erf_input(erf: Any) -> Any:
        """x, where erf's argument is x / sqrt(2) (a Mul by 1/sqrt(2) or a Div by sqrt(2))."""
        s = erf.args[0]
        if g.math(s, "mul"):
            return s.args[1] if near(s.args[0], 2**-0.5) else s.args[0] if near(s.args[1], 2**-0.5) else None
        return s.args[0] if g.math(s, "div") and near(s.args[1], 2**0.5) else None

    def product_end(one_plus: Any, x: Any) -> Any:
        """The node whose value is x * 0.5 * one_plus (two Muls, in either order), else None."""
        m1 = g.only_user(one_plus)
        if m1 is None or not g.math(m1, "mul"):
            return None
        f1 = g.other(m1, one_plus)
        if g.math(f1, "mul") and x in f1.args and near(g.other(f1, x), 0.5) and len(f1.users) == 1:
            return m1  # (x * 0.5) * (1 + erf)
        m2 = g.only_user(m1)
        if m2 is None or not g.math(m2, "mul") or not (f1 is x or near(f1, 0.5)):
            return None
        f2 = g.other(m2, m1)
        return m2 if (f2 is x and near(f1, 0.5)) or (f1 is x and near(f2, 0.5)) else None

    fused = 0
    for erf in list(graph.nodes):
        if not isinstance(g.module(erf), OnnxErf) or (x := erf_input(erf)) is None:
            continue
        one_plus = g.only_user(erf)
        if one_plus is None or not g.math(one_plus, "add") or not near(g.other(one_plus, erf), 1.0):
            continue
        end = product_end(one_plus, x)
        if end is None:
            continue
        with graph.inserting_before(end):
            new = graph.call_function(nn.functional.gelu, (x,))
        end.replace_all_uses_with(new)
        fused += 1
    graph.eliminate_dead_code()  # the erf chains, now without a use
    g.finish()
    return fused


class HostShape(nn.Module):
    """ONNX Shape answered on the host (onnx2torch makes a device tensor of it, read back later)."""

    def __init__(self, shape: Any) -> None:
        super().__init__()
        self.start, self.end = shape._start, shape._end

    def forward(self, x: Any) -> Any:
        return torch.tensor(x.shape[self.start : self.end])


def host_readers() -> dict[type, set[int | str]]:
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
    Python values (``host_readers``); the rest stays on the device."""
    from onnx2torch.node_converters import binary_math_operations, cast, concat, gather
    from onnx2torch.node_converters.range import OnnxRange
    from onnx2torch.node_converters.shape import OnnxShape

    readers = host_readers()
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
