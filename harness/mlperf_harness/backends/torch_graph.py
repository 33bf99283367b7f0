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
reads its lengths back) is cut before its first wait (``torch_split.split_at``): the part before it
captured, the rest run eagerly on its outputs, where the part before has at least as many ops as
the rest; ``eager_reason`` says where and why (onnx2torch reads shapes, axes and sizes back as
Python values: ``torch_rewrites.host_shape_arithmetic`` keeps those on the host first). BERT's
attention is fused on a GPU (``torch_rewrites.fuse_attention``), its dense layers' bias adds
into the GEMMs and its erf GELUs into one kernel (``fuse_linear``, ``fuse_gelu``). All of it ran on
H200s (BENCHMARKS.md; the capture per signature, the split capture and the dense fusions on
2026-12-05), and on an H100 the same day the samples kept on the device (``reserve_samples``: a
batch is its rows picked there) and one converted model shared by the instances that load it on
one device (``Prepared``); dlrm's external tables at full size (``torch_external``) loaded there
(44.8 GiB), and its harness ran on an H200 (18,745 samples/s, held by its host-side collate).
dlrm's 26 lookups as one gather (``torch_rewrites.fuse_lookups``, done before the model moves to
the GPU so the tables are copied there once) is CPU-tested only.

``convert`` registers the ops onnx2torch lacks and replaces those it gets wrong (``torch_ops``),
maps external initializers (``torch_external``), and corrects onnx2torch's CumSum, which reverses
a sum whose ``reverse`` attribute is absent.
"""

from __future__ import annotations

import gc
import operator
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..device_gate import GATE
from ..errors import HarnessError
from .base import ModelBackend, Tensors, TensorSpec, pick_outputs
from .torch_backend import _numpy, _torch, batch_bucket, static_randn, torch_device
from .torch_external import map_external, memory_figures, register_mapped_tensors
from .torch_ops import (
    ConstantOfShape,
    InstanceNorm,
    OnnxNMS,
    ScatterND,
    missing_converters,
    nms_limits,
    register_converters,
    share_conditions,
)
from .torch_rewrites import (
    constant_gathers,
    conv_layout,
    fuse_attention,
    fuse_gelu,
    fuse_linear,
    fuse_lookups,
    half,
    host_shape_arithmetic,
)
from .torch_split import Split, batch_rows, first_wait, gpu_waits, split_at

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
def convert(proto: onnx.ModelProto, outputs: Sequence[str], path: Path) -> Any:
    """The graph as an fx.GraphModule that takes the inputs in graph order and returns exactly
    ``outputs`` as a tuple (what nothing asked for is not computed). ``proto`` is the graph of the
    file ``path``, its weights loaded or not. External initializers come memory-mapped
    (``register_mapped_tensors``): moving the module to a device copies them one at a time, each
    mapping released before the next, so the host never holds them all (dlrm's 45 GiB of tables);
    on the CPU they stay mapped, their pages read as they are used. The GPU side is untested on a
    GPU (tests/harness/test_torch_external.py has its test, skipped without CUDA)."""
    from onnx2torch import convert as onnx2torch_convert
    from onnx2torch.onnx_graph import OnnxGraph

    register_converters()
    register_mapped_tensors()
    missing = missing_converters(proto)
    if missing:
        raise HarnessError(
            f"{path.name}: onnx2torch cannot convert {', '.join(missing)}; use backend onnxruntime for this model"
        )
    try:
        # The graph without its external data is small enough for onnx2torch's in-memory shape
        # inference (protobuf's limit is 2 GiB); the external tensors are mapped when converted.
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        model = onnx2torch_convert(map_external(proto, path) if external else _load_proto(path))
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


# --- the backend ------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A model converted and rewritten for one device and dtype, and what the rewrites did (backend
    attributes: their counts, the inputs' memory formats). The instances of a run that load the same
    file on the same device share it (``_PREPARED``): its weights are read, moved and held once (dlrm's
    44.8 GiB of tables), its rewrites done once. Its modules keep no state across calls, so instances'
    threads call it at once; each instance keeps its own graphs, split, buffers and stream."""

    model: Any
    facts: dict[str, Any]


# Held while an instance holds it: gone, and its device memory with it, once the last one closes.
_PREPARED: weakref.WeakValueDictionary[tuple[Any, ...], Prepared] = weakref.WeakValueDictionary()
_PREPARED_LOCK = threading.Lock()


class TorchGraphBackend(ModelBackend):
    """Load with ``load(path, batch_size, precision, outputs=[...])``, run ``predict(feeds)``; a
    model of several parts (rnnt) is one instance per part, as the SUT loads it."""

    name = "pytorch"

    def __init__(self, use_graphs: bool | None = None) -> None:
        # MLPERF_TORCH_GRAPHS=0: no CUDA graphs; MLPERF_TORCH_ATTENTION=0: attention unfused,
        # MLPERF_TORCH_DENSE=0: dense layers' bias adds and erf GELUs unfused (to compare).
        self.use_graphs = use_graphs if use_graphs is not None else os.environ.get("MLPERF_TORCH_GRAPHS", "1") != "0"
        self.fuse_attention = os.environ.get("MLPERF_TORCH_ATTENTION", "1") != "0"
        self.fuse_dense = os.environ.get("MLPERF_TORCH_DENSE", "1") != "0"
        self.attention = 0  # attention blocks fused (on a GPU)
        self.linears = 0  # MatMul + bias made Linear layers (on a GPU)
        self.gelus = 0  # erf GELUs made one gelu (on a GPU)
        self.on_host = 0  # values of the shape arithmetic kept on the host (on a GPU)
        self.eager_reason = ""  # why the graph, or its part from its first wait (``split``), runs eagerly on a GPU
        # MLPERF_TORCH_SPLIT=0: a graph that waits for the GPU runs wholly eagerly (no split capture).
        self.split_graphs = os.environ.get("MLPERF_TORCH_SPLIT", "1") != "0"
        self.split: Split | None = None  # the graph cut at its first wait: its prefix captured (on a GPU)
        self._rows: tuple[bool, ...] = ()  # which of the prefix's outputs lead with the batch
        self._pad = True  # batches padded to their bucket (not where a prefix output depends on the batch size)
        self.fused = 0  # convolutions fused with their bias and ReLU (on a GPU)
        self.gathers = 0  # gathers at a constant index made selects (on a GPU)
        self.lookups = 0  # table lookups fused into one gather (on a GPU: dlrm's 26)
        self._formats: dict[str, Any] = {}  # input -> its memory format on the GPU (channels-last)
        self._file = ""
        self._model: Any = None
        self._prepared: Prepared | None = None  # the model, shared with other instances of it (``Prepared``)
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
        self._staged: list[Any] = []  # the loaded samples on the device, per input (start_from_device)
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
        stat = model_path.stat()
        the_file = (model_path.resolve(), stat.st_mtime_ns, stat.st_size)
        key = (*the_file, tuple(self._names), str(self._dev), str(self._dtype), self.fuse_attention, self.fuse_dense)
        with _PREPARED_LOCK:  # a second instance of the model on this device waits for the first's
            self._prepared = _PREPARED.get(key)
            if self._prepared is None:
                self._prepared = _PREPARED[key] = self._prepare(proto, model_path)
        self._model = self._prepared.model
        for name, value in self._prepared.facts.items():
            setattr(self, name, value)
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

    def _prepare(self, proto: onnx.ModelProto, model_path: Path) -> Prepared:
        """The graph converted, moved to the device, rewritten for it and cast to the run's dtype."""
        model = convert(proto, self._names, model_path).eval()
        facts: dict[str, Any] = {}
        if self.on_gpu:  # before the move: the tables go to the device once, laid end to end
            facts["lookups"] = fuse_lookups(model, self._dev)
        model = model.to(self._dev)
        if self.on_gpu:
            facts["gathers"] = constant_gathers(model)
            facts["on_host"] = host_shape_arithmetic(model)
            if self.fuse_attention:
                facts["attention"] = fuse_attention(model)
            if self.fuse_dense:
                facts["linears"], facts["gelus"] = fuse_linear(model), fuse_gelu(model)
        if self._dtype != torch.float32:
            model = half(model, self._dtype)
        if self.on_gpu:
            facts["fused"], facts["_formats"] = conv_layout(model, self._ins)
        for m in model.modules():
            if isinstance(m, nn.RNNBase):
                m.flatten_parameters()  # cuDNN's RNN takes its weights as one block
        return Prepared(model, facts)

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
        try:  # a view where torch can take one: dlrm's offsets are one row repeated (a stride of 0)
            x = torch.from_numpy(batch)
        except (ValueError, TypeError):  # negative strides, or not an ndarray
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
        if not self.on_gpu:
            return self._on_host([self._upload(s, b) for s, b in zip(self._ins, batch, strict=True)])

        def inputs(static: Sequence[Any] | None) -> Sequence[Any]:
            if static is None:
                return [self._upload(s, b) for s, b in zip(self._ins, batch, strict=True)]
            for s, b, x in zip(self._ins, batch, static, strict=True):
                self._upload(s, b, x)
            return static

        return self._on_gpu(len(batch[0]), batch, inputs)

    def _on_host(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outs = self._model(*inputs)
        return {name: _numpy(o) for name, o in zip(self._names, outs, strict=True)}

    def _on_gpu(
        self, n: int, like: Sequence[Any], inputs: Callable[[Sequence[Any] | None], Sequence[Any]]
    ) -> dict[str, np.ndarray]:
        """A batch of ``n`` on the GPU, its inputs (shaped as ``like``'s rows, arrays or tensors) put
        on the device by ``inputs``: into a graph's static inputs (rows past the batch zeroed), or,
        given None, as new tensors for an eager call. Replayed where a graph is captured for them."""
        with torch.cuda.device(self._dev), torch.cuda.stream(self._stream), torch.inference_mode():
            bucket = batch_bucket(n, self._batch) if self._pad else n
            captured = self._graph_for(signature(like, bucket)) if self.graphed else None
            if captured is not None and (self._pad or len(captured[1][0]) == n):  # the first capture may stop padding
                graph, static_in, static_out = captured
                inputs(static_in)
                graph.replay()
                if self.split is None:
                    outs = tuple(o[:n] for o in static_out)
                else:  # the rest of the graph, eagerly on the prefix's outputs (before the next replay)
                    outs = self.split.suffix(*(o[:n] if r else o for o, r in zip(static_out, self._rows, strict=True)))
            else:
                outs = self._model(*inputs(None))
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
        None from now on, ``eager_reason`` set. Both ran on an H200 (2026-12-05): bert's shapes per
        length and batch bucket, ssd's split capture."""
        static_in = []
        for s, shape in zip(self._ins, key, strict=True):
            dtype = np.dtype(s.dtype)
            # Random floats, not zeros: cuDNN picks its kernels on real data; ints 0 (a valid index).
            x = static_randn(shape, self._dev) if dtype.kind == "f" else torch.zeros(shape, device=self._dev)
            x = x.to(self._dtype if dtype.kind == "f" else getattr(torch, dtype.name))
            fmt = self._formats.get(s.name)
            static_in.append(x if fmt is None else x.contiguous(memory_format=fmt))
        # Alone on the device (device_gate): a capture during the run waits for other instances' batches.
        with GATE.capture(), torch.cuda.device(self._dev), torch.inference_mode():
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
            outs = split.prefix(*static_in)
        if self._one_row:  # calls of one row, graphs of batch 1: nothing padded, nothing to cut
            rows: tuple[bool | None, ...] = (False,) * len(outs)
        else:
            try:
                rows = batch_rows(split.prefix, static_in)
            except RuntimeError:  # a prefix that takes no other batch (a Reshape to [1, ...]): never padded
                rows = (None,) * len(outs)
        self.split, self._rows, self._pad = split, tuple(r is True for r in rows), None not in rows
        self.eager_reason = f"{split.describe()}: {wait}" + ("" if self._pad else "; batches not padded")
        sys.stderr.write(f"pytorch: {self._file}: {self.eager_reason}\n")

    # --- device-resident samples (start_from_device) -------------------------------------------
    def reserve_samples(self, capacity: int) -> bool:
        """Room for ``capacity`` loaded samples on this instance's device, each input in the graph's
        dtype (floats in the run's) and memory format: a batch is then its rows picked there, with no
        stack, conversion or copy on the host. Not where an input's shape varies (ragged batches are
        the benchmark's to form) nor for a graph of one row (its batches run as calls of one).
        On the CPU the device is host memory: the samples are still converted once, not per batch."""
        assert self._model is not None, "load() first"
        if any(s.ragged for s in self._ins) or self._one_row:
            return False
        self._staged = [
            torch.empty(
                (capacity, *s.concrete()),
                dtype=self._dtype if np.dtype(s.dtype).kind == "f" else getattr(torch, s.dtype),
                device=self._dev,
                memory_format=self._formats.get(s.name, torch.contiguous_format),
            )
            for s in self._ins
        ]
        self.resident = True
        return True

    def stage_samples(self, tensors: Tensors) -> None:
        for spec, into in zip(self._ins, self._staged, strict=True):
            samples = tensors[spec.name]
            if len(samples) > len(into):
                raise RuntimeError(f"pytorch: {len(samples)} samples loaded, {len(into)} reserved")
            step = max(1, (256 << 20) // max(1, samples[:1].nbytes))  # in slices of 256 MB: no full copy on the device
            for start in range(0, len(samples), step):  # a read-only map (models.py's store) is copied
                part = torch.from_numpy(np.require(samples[start : start + step], requirements=["C", "W"]))
                into[start : start + len(part)].copy_(part.to(self._dev))
        if self.on_gpu:
            torch.cuda.synchronize(self._dev)  # staged (on the loading thread) before any batch reads them

    def predict_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        if not self.on_gpu:
            return self._on_host([x.index_select(0, index) for x in self._staged])
        n = len(index)

        def inputs(static: Sequence[Any] | None) -> Sequence[Any]:  # on the instance's stream
            on_device = index.to(self._dev)
            picked = [x.index_select(0, on_device) for x in self._staged]
            if static is None:
                return picked
            for x, into in zip(picked, static, strict=True):
                into[:n].copy_(x)
                into[n:].zero_()
            return static

        return self._on_gpu(n, self._staged, inputs)

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

    def graphs_per_shape(self) -> bool:
        return self.on_gpu and self.graphed

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
        self._staged = []
        self.split = None
        prepared = weakref.ref(self._prepared) if self._prepared is not None else None
        self._model = self._prepared = None  # the shared model goes with its last instance
        if prepared is not None and prepared() is None:
            # An fx module and its graph refer to each other: only a collection frees its weights, and
            # the device memory with them, before the next model loads (dlrm's 44.8 GiB on an H100).
            gc.collect()

    def device(self) -> str:
        if self.on_gpu:
            return f"{self._dev} {torch.cuda.get_device_name(self._dev)}"
        return "cpu"
