"""PyTorch: the same ONNX model converted with onnx2torch (or a saved TorchScript module).

On a GPU: fp16/bf16, channels-last, graph rewrites (cuDNN's fused convolution + bias + ReLU
(+ residual add) with the shortcut's bias folded in, the stem's input padded to 4 channels, the
max-pool compiled), one CUDA graph per batch bucket, the instances on a GPU queueing on its one
stream, pinned host buffers, and the loaded samples resident in device memory
(start_from_device): a batch is then a few row numbers in and one class index per sample out.
Optionally torch.compile of the whole model, its artifacts cached in the engine directory so that
only build-engine pays the compile (that save-and-reload path is untested on a GPU so far).
On the CPU: plain fp32. That is the image path, for one 4-D float input and one output (resnet50's
model); ``load`` hands any other graph to the general path (``torch_graph.TorchGraphBackend``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..device_gate import GATE
from ..errors import HarnessError
from ..fsutil import atomic_write_bytes
from .base import Backend, ModelBackend, Tensors, TensorSpec

if TYPE_CHECKING:
    from ..config import HarnessConfig

# Graph rewrites of the half-precision GPU path, measured one by one in BENCHMARKS.md.
REWRITES = ("fuse", "fold", "pad", "pool")
STEM_CHANNELS = 4  # cuDNN pads 3 to 4 itself, in an extra kernel; 8 takes a slower kernel
COMPILE_MODES = {"off": None, "default": "default", "max-autotune": "max-autotune-no-cudagraphs"}
ENGINE_MODEL = "model.onnx"
FP8_SCALES = "fp8-scales.json"  # beside the engine's model: the calibrated activation ranges


def _torch() -> Any:
    try:
        import torch

        return torch
    except ImportError:
        raise HarnessError("pytorch: torch is not installed (install the gpu extra)") from None


def _numpy(out: Any) -> np.ndarray:
    """A backend output as numpy on the host (fp16/bf16 as float32)."""
    return np.asarray((out.float() if out.is_floating_point() else out).cpu().numpy())


def torch_device(index: int, precision: str) -> tuple[Any, Any]:
    """The device an instance runs on (``cuda:<index>`` where torch sees a GPU, else the CPU) and
    the dtype its float tensors run in (fp16/bf16 on a GPU as asked, else fp32); on a GPU it also
    sets the process's TF32 use and cuDNN's per-shape kernel choice."""
    torch = _torch()
    cuda = torch.cuda.is_available()
    if cuda and index >= torch.cuda.device_count():
        raise HarnessError(
            f"system.gpuCount: an instance is meant for cuda:{index} but only "
            f"{torch.cuda.device_count()} GPU(s) are visible; lower system.gpuCount or request more GPUs"
        )
    if cuda:
        # fp32 means fp32: no TF32 (it can move an argmax against the FP32 reference).
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.benchmark = True  # each conv shape picks its fastest cuDNN kernel once
    # fp8: the layers that stay unquantised (stem, 3x3 convolutions, classifier) run in fp16.
    half = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float16}
    dtype = half.get(precision, torch.float32) if cuda else torch.float32
    return torch.device(f"cuda:{index}" if cuda else "cpu"), dtype


def static_randn(shape: Any, device: Any) -> Any:
    """Normal floats for a graph's static inputs, drawn on the host: the device's generator is
    registered with every capture under way, and a draw from it in another thread then fails."""
    torch = _torch()
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)


def batch_bucket(n: int, batch: int) -> int:
    """Graphs exist for powers of two up to the batch size (and the batch size): a partial
    batch is padded to the next one, so Server's varying batches reuse a handful of graphs."""
    size = 1
    while size < n:
        size *= 2
    return min(size, batch) if n <= batch else n


def rewrites_from_env() -> set[str]:
    value = os.environ.get("MLPERF_TORCH_REWRITES", ",".join(REWRITES))
    chosen = {r.strip() for r in value.split(",") if r.strip() and r.strip() != "none"}
    if chosen - set(REWRITES):
        raise HarnessError(
            f"MLPERF_TORCH_REWRITES: {', '.join(sorted(chosen - set(REWRITES)))} unknown; "
            f"use a comma-separated subset of {', '.join(REWRITES)}, or none"
        )
    return chosen


def compile_cache_file(engine_dir: Path, precision: str, batch: int, mode: str) -> Path:
    return engine_dir / f"torch-compile-{mode}-{precision}-b{batch}.bin"


@functools.cache
def fused_conv_class() -> Any:
    """cuDNN's fused conv + bias (+ add) + ReLU as a module, ``(x)`` or ``(x, z)``; on the CPU (where
    the rewrites are checked) the same as conv2d, add and ReLU."""
    torch = _torch()
    from torch import nn

    class FusedConv(nn.Module):
        def __init__(self, conv: Any, add: bool, extra_bias: Any = None) -> None:
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias
            if extra_bias is not None:
                total = extra_bias.float() + (0.0 if conv.bias is None else conv.bias.float())
                self.bias = nn.Parameter(total.to(extra_bias.dtype), requires_grad=False)
            self.stride, self.padding, self.dilation, self.groups = (
                list(conv.stride),
                list(conv.padding),
                list(conv.dilation),
                conv.groups,
            )
            self.add = add

        def forward(self, x: Any, z: Any = None) -> Any:
            args = (self.stride, self.padding, self.dilation, self.groups)
            if not x.is_cuda:
                y = torch.nn.functional.conv2d(x, self.weight, self.bias, *args)
                return torch.relu(y + z if self.add else y)
            if self.add:
                return torch.ops.aten.cudnn_convolution_add_relu(x, self.weight, z, 1.0, self.bias, *args)
            return torch.ops.aten.cudnn_convolution_relu(x, self.weight, self.bias, *args)

    return FusedConv


def fuse_conv_activations(model: Any, fold_bias: bool = True) -> tuple[int, int]:
    """Rewrite Conv -> ReLU and Conv -> Add -> ReLU of an onnx2torch graph into cuDNN's fused
    conv + bias + (add +) ReLU (one kernel instead of two or three). With ``fold_bias``, when the
    added branch is itself a convolution (ResNet's projection shortcut), its bias moves into the
    fused convolution's: torch adds a conv's bias in a kernel of its own, a full pass over a large
    activation. Returns (convolutions fused, biases folded)."""
    torch = _torch()
    from torch import fx, nn

    FusedConv = fused_conv_class()

    def kind(node: Any) -> str:
        if not isinstance(node, fx.Node) or node.op != "call_module":
            return ""
        mod = model.get_submodule(str(node.target))
        if isinstance(mod, nn.Conv2d) and isinstance(mod.padding, tuple) and mod.padding_mode == "zeros":
            return "conv"
        if isinstance(mod, nn.ReLU):
            return "relu"
        if getattr(mod, "math_op_function", None) is torch.add:
            return "add"
        return ""

    graph: fx.Graph = model.graph
    fused = folded = 0
    for relu in list(graph.nodes):
        if kind(relu) != "relu":
            continue
        src = relu.args[0]
        assert isinstance(src, fx.Node)
        conv, z = (src, None) if kind(src) == "conv" else (None, None)
        if kind(src) == "add" and len(src.users) == 1:
            a, b = src.args
            for first, other in ((a, b), (b, a)):
                if kind(first) == "conv" and len(first.users) == 1:
                    conv, z = first, other
                    break
        if conv is None or len(conv.users) != 1:
            continue
        shortcut: Any = None
        if fold_bias and isinstance(z, fx.Node) and kind(z) == "conv" and len(z.users) == 1:
            shortcut = model.get_submodule(str(z.target))
        extra = None if shortcut is None else shortcut.bias
        name = f"fused_{fused}"
        model.add_submodule(name, FusedConv(model.get_submodule(str(conv.target)), z is not None, extra))
        if extra is not None:
            shortcut.bias = None
            folded += 1
        with graph.inserting_before(relu):
            args = (conv.args[0],) if z is None else (conv.args[0], z)
            new = graph.call_module(name, args)
        relu.replace_all_uses_with(new)
        for dead in (relu, src, conv) if z is not None else (relu, conv):
            graph.erase_node(dead)
        fused += 1
    graph.lint()
    model.delete_all_unused_submodules()
    model.recompile()
    return fused, folded


@functools.cache
def _compiled_max_pool() -> Any:
    """One compiled max-pool for the process: every backend instance shares its compiles (a
    compiled function per instance would count towards dynamo's recompile limit, after which
    it silently runs eager)."""
    torch = _torch()

    def max_pool(x: Any, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> Any:
        out = torch.nn.functional.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        return out.contiguous(memory_format=torch.channels_last)

    return torch.compile(max_pool, dynamic=None)  # the second batch size seen makes the batch symbolic


def compile_max_pools(model: Any) -> int:
    """Each max-pool becomes one inductor kernel that reads its input once and writes the output
    channels-last, without indices: torch's eager NHWC max-pool also writes the indices and took
    3.5 of ResNet-50's 28 ms at batch 1024 on an H200. Returns how many."""
    from torch import nn

    class CompiledMaxPool(nn.MaxPool2d):  # still a max-pool to the FP8 rewrite (torch_fp8.pool_facts)
        def __init__(self, pool: Any) -> None:
            super().__init__(pool.kernel_size, pool.stride, pool.padding, pool.dilation, False, pool.ceil_mode)
            self.args = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)

        def forward(self, x: Any) -> Any:
            return _compiled_max_pool()(x, *self.args)

    names = [n for n, m in model.named_modules() if type(m) is nn.MaxPool2d and not m.return_indices]
    for name in names:
        model.set_submodule(name, CompiledMaxPool(model.get_submodule(name)))
    return len(names)


def pad_input_channels(model: Any, channels: int) -> bool:
    """Zero-pad the input channels of the convolution that reads the model's input (3 -> 4, say):
    the staged samples then carry the padding once, instead of cuDNN padding every batch in a
    kernel of its own. Returns whether it padded."""
    torch = _torch()
    placeholder = next(n for n in model.graph.nodes if n.op == "placeholder")
    users = list(placeholder.users)
    if len(users) != 1 or users[0].op != "call_module":
        return False
    mod = model.get_submodule(str(users[0].target))
    w = getattr(mod, "weight", None)
    if w is None or w.dim() != 4 or w.shape[1] >= channels or getattr(mod, "groups", 1) != 1:
        return False
    padded = torch.zeros((w.shape[0], channels, *w.shape[2:]), dtype=w.dtype, device=w.device)
    padded[:, : w.shape[1]] = w
    mod.weight = torch.nn.Parameter(padded.contiguous(memory_format=torch.channels_last), requires_grad=False)
    if hasattr(mod, "in_channels"):
        mod.in_channels = channels
    return True


def _link_model(model_path: Path, out_dir: Path) -> Path:
    """The model in the engine directory (a hard link where the file system allows)."""
    target = out_dir / ENGINE_MODEL
    if not target.exists():
        try:
            os.link(model_path, target)
        except OSError:
            shutil.copyfile(model_path, target)
    return target


class PyTorchBackend(ModelBackend):
    name = "pytorch"
    # Instances on one GPU replay on that GPU's one stream: their batches run back to back (as in
    # a plain loop) instead of interleaving, and each waits on its own batch's event.
    _shared_streams: dict[int, Any] = {}

    def __init__(self, use_graphs: bool | None = None) -> None:
        # MLPERF_TORCH_GRAPHS=0 turns CUDA graphs off, MLPERF_TORCH_REWRITES picks the graph
        # rewrites of the half-precision GPU path ("none" for none): both to compare.
        self.use_graphs = use_graphs if use_graphs is not None else os.environ.get("MLPERF_TORCH_GRAPHS", "1") != "0"
        self.rewrites = rewrites_from_env()
        # MLPERF_TORCH_STREAM=own: each instance its own stream (instances on a GPU interleave).
        self.shared_stream = os.environ.get("MLPERF_TORCH_STREAM", "shared") != "own"
        self._channels = 0  # channels of the staged samples and of the model's input
        self.compile_mode = "off"
        self._model: Any = None  # eager (fused) model: every batch bucket
        self._compiled: Any = None  # torch.compile'd model: the full batch only (one compile)
        self._dev: Any = None
        self._dtype: Any = None
        self._stream: Any = None
        self._capture_stream: Any = None
        self._out_index = 0
        self._in: TensorSpec | None = None  # with the batch dimension
        self._out: TensorSpec | None = None
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # bucket -> (graph, static in, static out)
        self._samples: Any = None  # staged samples, (capacity, H, W, C) on the device
        self._pinned_in: Any = None
        self._pinned_out: Any = None
        self._batch = 1
        self.fused = self.folded = self.pools = 0
        # fp8: host batches (NCHW float32) to calibrate on when building an engine (set by build-engine),
        # the ranges in use, and how many convolutions became FP8 GEMMs.
        self.calibration_batches: list[np.ndarray] | None = None
        self.fp8_amax: dict[str, float] = {}
        self.fp8_convs = 0
        self.compile_cache: Path | None = None
        # Any other graph (several inputs or outputs, int inputs, not 4-D): the general path.
        self._general: Backend | None = None

    # --- setup --------------------------------------------------------------------------------
    @classmethod
    def version(cls) -> str:
        try:
            return str(_torch().__version__)
        except HarnessError:
            return "unavailable"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _torch()
            import onnx2torch  # noqa: F401
        except (HarnessError, ImportError):
            return False, "torch and onnx2torch are not installed here"
        return True, ""

    def configure(self, cfg: HarnessConfig) -> None:
        # MLPERF_TORCH_COMPILE overrides the harness config's torchCompile (for benchmarking).
        mode = os.environ.get("MLPERF_TORCH_COMPILE") or cfg.torchCompile
        if mode not in COMPILE_MODES:
            raise HarnessError(f"torchCompile: {mode!r} is not one of {', '.join(COMPILE_MODES)}")
        self.compile_mode = mode

    @property
    def on_gpu(self) -> bool:
        return self._dev is not None and self._dev.type == "cuda"

    # The image path runs one input and one output (as resnet50's model has); its internal specs keep
    # the batch dimension, the interface's are per sample.
    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        if self._general is not None:
            return self._general.input_specs
        assert self._in is not None, "load() first"
        return (TensorSpec(self._in.name, self._in.shape[1:], self._in.dtype),)

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        if self._general is not None:
            return self._general.output_specs
        assert self._out is not None, "load() first"
        return (TensorSpec(self._out.name, self._out.shape[1:], self._out.dtype),)

    def load(self, model_path: Path, batch_size: int, precision: str, *, outputs: Sequence[str] = ()) -> None:
        torch = _torch()
        self._general = None
        if not model_path.is_file():
            raise HarnessError(f"{model_path}: missing model file")
        from .torch_graph import TorchGraphBackend, fits_image_path

        if model_path.suffix == ".onnx" and not fits_image_path(model_path, outputs):
            if precision == "fp8":
                raise HarnessError(f"{model_path.name}: precision fp8 runs on the pytorch image path only; use fp16")
            self._general = TorchGraphBackend(self.use_graphs)
            self._general.device_index = self.device_index
            self._general.load(model_path, batch_size, precision, outputs=outputs)
            return
        output_name = outputs[0] if outputs else None
        self._dev, self._dtype = torch_device(self.device_index, precision)
        cuda = self.on_gpu
        self._batch = batch_size
        if cuda:
            self._stream = self._shared_streams.get(self.device_index) if self.shared_stream else None
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=self._dev)
                if self.shared_stream:
                    self._shared_streams[self.device_index] = self._stream
            self._capture_stream = torch.cuda.Stream(device=self._dev)
        if model_path.suffix == ".onnx":
            model = self._convert(model_path, output_name)
        else:
            model = torch.jit.load(str(model_path), map_location=self._dev)
        model = model.eval().to(self._dev)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
            if self._dtype != torch.float32:
                model = model.to(self._dtype)
            # fp32 stays as it is: cuDNN's fused kernels may compute in TF32.
            if self._dtype != torch.float32 and isinstance(model, torch.fx.GraphModule):
                self._rewrite(model)
        if precision == "fp8":
            self._to_fp8(model, model_path)
        self._model = model
        if cuda and self.compile_mode != "off":
            self._compiled = self._compile(model, model_path.parent, precision)

    def _rewrite(self, model: Any) -> None:
        if "fuse" in self.rewrites:
            self.fused, self.folded = fuse_conv_activations(model, fold_bias="fold" in self.rewrites)
        # An FP8 stem (fp8_gemm) wants the padding too: a pixel of 4 fp16 channels is 8 aligned bytes,
        # its loads vectorised and pipelined; of 3, ptxas spilled and nothing was pipelined (fp8_ptxas).
        if "pad" in self.rewrites and pad_input_channels(model, STEM_CHANNELS):
            self._channels = STEM_CHANNELS
        if "pool" in self.rewrites:
            self.pools = compile_max_pools(model)

    def _to_fp8(self, model: Any, model_path: Path) -> None:
        """The FP8 rewrite (``torch_fp8``) with the engine's calibrated ranges, or, building one,
        ranges from ``calibration_batches``; on the CPU after the convolutions' fusion alone, with
        the GEMMs emulated (to check the rewrite, not to run fast)."""
        from . import torch_fp8

        if not isinstance(model, _torch().fx.GraphModule):
            raise HarnessError(f"{model_path.name}: precision fp8 needs an ONNX model (a TorchScript one was given)")
        if not self.on_gpu:
            self.fused, self.folded = fuse_conv_activations(model, fold_bias=True)
        scales = model_path.parent / FP8_SCALES
        if scales.is_file():
            self.fp8_amax = json.loads(scales.read_text())["amax"]
        elif self.calibration_batches is not None:
            batches = (self._device_batch(b) for b in self.calibration_batches)
            self.fp8_amax = torch_fp8.calibrate(model, batches, "all")  # every candidate of either mode
        else:
            raise HarnessError(f"{scales}: missing FP8 calibration; build the engine with precision fp8 (build-engine)")
        mode = torch_fp8.conv_mode()
        emit = os.environ.get("MLPERF_TORCH_FP8_EMIT", "1") != "0"
        self.fp8_convs = torch_fp8.quantize_model(model, self.fp8_amax, mode, self._dtype, self.on_gpu, emit)

    def _device_batch(self, batch: np.ndarray) -> Any:
        """A host NCHW float batch as the model takes it (device, dtype, layout, padded stem)."""
        torch = _torch()
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._dev).to(self._dtype)
        if self.on_gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[1] < self._channels:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self._channels - x.shape[1]))
        return x

    def _convert(self, model_path: Path, output_name: str | None) -> Any:
        import onnx
        from onnx2torch import convert

        proto = onnx.load(str(model_path))
        outs = [o.name for o in proto.graph.output]
        self._out_index = outs.index(output_name) if output_name in outs else 0
        inp = proto.graph.input[0]
        dims = tuple(d.dim_value or None for d in inp.type.tensor_type.shape.dim)
        self._in = TensorSpec(inp.name, dims, "float32")
        out = proto.graph.output[self._out_index]
        odims = tuple(d.dim_value or None for d in out.type.tensor_type.shape.dim)
        odt = "int64" if out.type.tensor_type.elem_type == onnx.TensorProto.INT64 else "float32"
        self._out = TensorSpec(out.name, odims, odt)
        return convert(proto)

    def _compile(self, model: Any, engine_dir: Path, precision: str) -> Any:
        """torch.compile for the full batch, with inductor's artifacts loaded from (and, after the
        first compile, saved to) a file in the engine directory."""
        torch = _torch()
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights become constants: folded and laid out for inference
        self.compile_cache = compile_cache_file(engine_dir, precision, self._batch, self.compile_mode)
        if self.compile_cache.is_file():
            torch.compiler.load_cache_artifacts(self.compile_cache.read_bytes())
        return torch.compile(model, mode=COMPILE_MODES[self.compile_mode], dynamic=False)

    def save_compile_cache(self) -> Path | None:
        """Write the compile's artifacts (after the first compiled batch) for later loads."""
        torch = _torch()
        if self.compile_cache is None:
            return None
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            atomic_write_bytes(self.compile_cache, saved[0])
        return self.compile_cache

    def build_engine(
        self, model_path: Path, out_dir: Path, batch_size: int, precision: str, inputs: Sequence[TensorSpec] = ()
    ) -> Path:
        """On a GPU with torch.compile on, the engine is the model (linked in) plus the compile's
        artifacts; otherwise the model runs as it is."""
        torch = _torch()
        if precision == "fp8":
            return self._build_fp8(model_path, out_dir, batch_size)
        if self.compile_mode == "off" or not torch.cuda.is_available():
            return model_path
        from .torch_graph import fits_image_path, output_names

        first = output_names(model_path)[:1]  # the compile is of the whole graph, whichever output is read
        if not fits_image_path(model_path, first):
            return model_path  # the general path compiles nothing
        target = _link_model(model_path, out_dir)
        self.load(target, batch_size, precision, outputs=first)
        assert self._in is not None
        self.warmup({self._in.name: np.zeros((batch_size, *(d or 1 for d in self._in.shape[1:])), np.float32)})
        self.save_compile_cache()
        self.close()
        return target

    def _build_fp8(self, model_path: Path, out_dir: Path, batch_size: int) -> Path:
        """The fp8 engine: the model (linked in) and the activation ranges calibrated on
        ``calibration_batches`` through the pipeline as it runs (fused, half precision), in
        ``fp8-scales.json``; the compile's artifacts too where torch.compile is on."""
        from .torch_graph import output_names

        if self.calibration_batches is None:
            raise HarnessError("fp8: build-engine got no calibration samples (the benchmark names none)")
        target = _link_model(model_path, out_dir)
        (out_dir / FP8_SCALES).unlink(missing_ok=True)
        self.load(target, batch_size, "fp8", outputs=output_names(target)[:1])
        facts = {"amax": self.fp8_amax, "samples": sum(len(b) for b in self.calibration_batches)}
        atomic_write_bytes(out_dir / FP8_SCALES, json.dumps(facts, indent=1, sort_keys=True).encode())
        if self.compile_mode != "off" and self.on_gpu:
            assert self._in is not None
            self.warmup({self._in.name: np.zeros((batch_size, *(d or 1 for d in self._in.shape[1:])), np.float32)})
            self.save_compile_cache()
        self.close()
        return target

    # --- CUDA graphs --------------------------------------------------------------------------
    def _run(self, x: Any, compiled: bool = False) -> Any:
        if x.shape[1] < self._channels:  # host batches have the model's 3 channels, the stem more
            x = _torch().nn.functional.pad(x, (0, 0, 0, 0, 0, self._channels - x.shape[1]))
        out = (self._compiled if compiled and self._compiled is not None else self._model)(x)
        return out[self._out_index] if isinstance(out, (tuple, list)) else out

    def _from_rows(self, rows: Any, compiled: bool) -> Any:
        # Staged as (N, H, W, C): the gathered batch viewed as NCHW is channels-last, no copy.
        x = self._samples.index_select(0, rows).permute(0, 3, 1, 2)
        return self._run(x, compiled)

    def _bucket(self, n: int) -> int:
        return batch_bucket(n, self._batch)

    def graphs_per_shape(self) -> bool:
        return self._general is not None and self._general.graphs_per_shape()

    def warmup(self, feeds: Tensors, rounds: int = 2) -> None:
        """Capture every bucket's CUDA graph now, on the loading thread: no capture during the
        timed run, and graphs are created and destroyed by the same thread."""
        if self._general is not None:
            return self._general.warmup(feeds, rounds)
        if self.on_gpu and self.use_graphs and self._in is not None and len(self._in.shape) == 4:
            for n in sorted({self._bucket(k) for k in range(1, self._batch + 1)}):
                self._graph_for(n)
            return
        super().warmup(feeds, rounds)

    def _static_input(self, n: int) -> Any:
        torch = _torch()
        if self.resident:
            return torch.arange(n, device=self._dev, dtype=torch.int64) % max(1, len(self._samples))
        assert self._in is not None
        shape = (n, *[d or 1 for d in self._in.shape[1:]])
        x = static_randn(shape, self._dev).to(self._dtype)  # not zeros: cuDNN picks on real data
        return x.contiguous(memory_format=torch.channels_last)

    def _graph_for(self, n: int) -> tuple[Any, Any, Any]:
        torch = _torch()
        if n in self._graphs:
            return self._graphs[n]
        compiled = n == self._batch and self._compiled is not None
        step = (lambda s: self._from_rows(s, compiled)) if self.resident else (lambda s: self._run(s, compiled))
        static_in = self._static_input(n)
        with GATE.capture(), torch.cuda.device(self._dev), torch.inference_mode():
            side = torch.cuda.Stream(device=self._dev)
            side.wait_stream(torch.cuda.current_stream(self._dev))
            with torch.cuda.stream(side):
                for _ in range(3):  # compile, cuDNN's choice and allocations happen outside the graph
                    step(static_in)
            torch.cuda.current_stream(self._dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # Captured on this instance's own stream: library workspaces (cuBLAS keys its by stream)
            # are then this instance's alone, so instances replaying at once on one GPU (with
            # MLPERF_TORCH_STREAM=own) never share one: with torch's one default capture stream,
            # two instances' graphs hung the GPU.
            with torch.cuda.graph(graph, stream=self._capture_stream):
                static_out = step(static_in)
        self._graphs[n] = (graph, static_in, static_out)
        return self._graphs[n]

    # --- device-resident samples (start_from_device) -------------------------------------------
    def reserve_samples(self, capacity: int) -> bool:
        torch = _torch()
        if self._general is not None:
            self.resident = self._general.reserve_samples(capacity)
            return self.resident
        if not self.on_gpu or self._in is None or len(self._in.shape) != 4:
            return False
        c, h, w = (d or 1 for d in self._in.shape[1:])
        self._samples = torch.zeros((capacity, h, w, max(c, self._channels)), dtype=self._dtype, device=self._dev)
        self.resident = True
        return True

    def stage_samples(self, tensors: Tensors) -> None:
        torch = _torch()
        if self._general is not None:
            return self._general.stage_samples(tensors)
        assert self._in is not None
        samples = tensors[self._in.name]
        n = len(samples)
        if n > len(self._samples):
            raise RuntimeError(f"pytorch: {n} samples loaded, {len(self._samples)} reserved")
        with torch.cuda.device(self._dev):
            for start in range(0, n, 256):  # in slices: no full fp32 copy of the set on the device
                part = torch.from_numpy(np.ascontiguousarray(samples[start : start + 256]))
                rows = self._samples[start : start + len(part), :, :, : part.shape[1]]
                rows.copy_(part.to(self._dev).permute(0, 2, 3, 1))
            torch.cuda.synchronize(self._dev)

    # --- inference ----------------------------------------------------------------------------
    def _pinned(self, attr: str, like: Any, n: int) -> Any:
        torch = _torch()
        buf = getattr(self, attr)
        if buf is None or len(buf) < n or buf.dtype != like.dtype or buf.shape[1:] != like.shape[1:]:
            buf = torch.empty((max(n, self._batch), *like.shape[1:]), dtype=like.dtype).pin_memory()
            setattr(self, attr, buf)
        return buf

    def _replay(self, host: Any) -> np.ndarray:
        """Pad to the bucket, copy in, replay the graph, copy the outputs back, on this
        instance's stream (so instances sharing a GPU overlap)."""
        torch = _torch()
        n = len(host)
        graph, static_in, static_out = self._graph_for(self._bucket(n))
        b = len(static_in)
        with torch.cuda.device(self._dev), torch.cuda.stream(self._stream):
            pin_in = self._pinned("_pinned_in", static_in, b)
            pin_in[:n].copy_(host)
            if b > n:
                pin_in[n:b].zero_()
            static_in.copy_(pin_in[:b], non_blocking=True)
            graph.replay()
            pin_out = self._pinned("_pinned_out", static_out, b)
            pin_out[:b].copy_(static_out, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        done.synchronize()  # this batch's event, not the stream: others may have queued behind it
        return _numpy(pin_out[:n])

    def _named(self, out: np.ndarray) -> dict[str, np.ndarray]:
        assert self._out is not None
        return {self._out.name: out}

    def predict_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        torch = _torch()
        if self._general is not None:
            return self._general.predict_rows(rows)
        if self.use_graphs:
            return self._named(self._replay(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))))
        with torch.inference_mode(), torch.cuda.device(self._dev):
            index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self._dev)
            out = self._from_rows(index, len(rows) == self._batch)
            return self._named(_numpy(out))

    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]:
        if self._general is not None:
            return self._general.predict(feeds)
        assert self._in is not None, "load() first"
        return self._named(self._predict(feeds[self._in.name]))

    def tensor_device(self) -> tuple[Any, Any] | None:
        return None if self._general is None else self._general.tensor_device()

    def predict_tensors(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if self._general is None:
            return super().predict_tensors(feeds)
        return self._general.predict_tensors(feeds)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        torch = _torch()
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.on_gpu and self.use_graphs and len(x.shape) == 4 and not self.resident:
            return self._replay(x.to(self._dtype))
        with torch.inference_mode():
            if self.on_gpu:
                x = x.to(self._dev).to(self._dtype).contiguous(memory_format=torch.channels_last)
            out = self._run(x, len(x) == self._batch)
            return _numpy(out)

    def close(self) -> None:
        if self._general is not None:
            self._general.close()
        self._graphs.clear()
        self._samples = None

    def device(self) -> str:
        if self._general is not None:
            return self._general.device()
        torch = _torch()
        if self.on_gpu:
            return f"{self._dev} {torch.cuda.get_device_name(self._dev)}"
        return "cpu"
