"""PyTorch: the same ONNX model converted with onnx2torch (or a saved TorchScript module),
fp16/bf16 and channels-last on GPU, one CUDA graph per batch size; plain fp32 on CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HarnessError
from .base import ModelBackend, TensorSpec


def _torch() -> Any:
    try:
        import torch

        return torch
    except ImportError:
        raise HarnessError("pytorch: torch is not installed (install the gpu extra)") from None


class PyTorchBackend(ModelBackend):
    name = "pytorch"

    def __init__(self, use_graphs: bool | None = None) -> None:
        # MLPERF_TORCH_GRAPHS=0 turns CUDA graphs off (for comparing, or a model that cannot be captured).
        self.use_graphs = use_graphs if use_graphs is not None else os.environ.get("MLPERF_TORCH_GRAPHS", "1") != "0"
        self._model: Any = None
        self._dev: Any = None
        self._dtype: Any = None
        self._out_index = 0
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # batch -> (graph, static in, static out)
        self._pinned: Any = None  # page-locked staging buffer for host-to-device copies
        self._batch = 1

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

    def load(self, model_path: Path, batch_size: int, precision: str, *, output_name: str | None = None) -> None:
        torch = _torch()
        import onnx

        if not model_path.is_file():
            raise HarnessError(f"{model_path}: missing model file")
        self._dev = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        on_gpu = self._dev.type == "cuda"
        self._batch = batch_size
        if on_gpu:
            # fp32 means fp32: no TF32 (it can move an argmax against the FP32 reference).
            torch.backends.cudnn.allow_tf32 = precision != "fp32"
            torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        self._dtype = (
            {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32) if on_gpu else torch.float32
        )
        if model_path.suffix == ".onnx":
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
            model = convert(proto)
        else:
            model = torch.jit.load(str(model_path), map_location=self._dev)
        model = model.eval().to(self._dev)
        if on_gpu:
            model = model.to(memory_format=torch.channels_last)
            if self._dtype != torch.float32:
                model = model.to(self._dtype)
        self._model = model

    def _run(self, x: Any) -> Any:
        out = self._model(x)
        return out[self._out_index] if isinstance(out, (tuple, list)) else out

    def _bucket(self, n: int) -> int:
        """Graphs exist for powers of two up to the batch size (and the batch size): a partial
        batch is padded to the next one, so Server's varying batches reuse a handful of graphs."""
        size = 1
        while size < n:
            size *= 2
        return min(size, self._batch) if n <= self._batch else n

    def warmup(self, batch_size: int, rounds: int = 2) -> None:
        """Capture every bucket's CUDA graph now, on the loading thread: no capture during the
        timed run, and graphs are created and destroyed by the same thread."""
        if (
            self._dev is not None
            and self._dev.type == "cuda"
            and self.use_graphs
            and self._in is not None
            and len(self._in.shape) == 4
        ):
            for n in sorted({self._bucket(k) for k in range(1, self._batch + 1)}):
                self._graph_for(n)
        super().warmup(batch_size, rounds)

    def close(self) -> None:
        self._graphs.clear()

    def _graph_for(self, n: int) -> tuple[Any, Any, Any]:
        torch = _torch()
        if n not in self._graphs:
            assert self._in is not None
            shape = (n, *[d or 1 for d in self._in.shape[1:]])
            static_in = torch.zeros(shape, device=self._dev, dtype=self._dtype).contiguous(
                memory_format=torch.channels_last
            )
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):  # warm up outside the graph, as capture requires
                    self._run(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self._run(static_in)
            self._graphs[n] = (graph, static_in, static_out)
        return self._graphs[n]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = _torch()
        n = len(batch)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch))
            if self._dev.type == "cuda":
                if self._pinned is None or len(self._pinned) < n:
                    self._pinned = torch.empty((max(n, self._batch), *x.shape[1:]), dtype=x.dtype).pin_memory()
                self._pinned[:n].copy_(x)
                x = self._pinned[:n].to(self._dev, non_blocking=True).to(self._dtype)
                if self._bucket(n) in self._graphs:
                    graph, static_in, static_out = self._graphs[self._bucket(n)]
                    static_in[:n].copy_(x)
                    graph.replay()
                    out = static_out[:n]
                    return (out.float() if out.is_floating_point() else out).cpu().numpy()
            out = self._run(x)
            return (out.float() if out.is_floating_point() else out).cpu().numpy()

    def device(self) -> str:
        torch = _torch()
        if self._dev is not None and self._dev.type == "cuda":
            return f"cuda:0 {torch.cuda.get_device_name(0)}"
        return "cpu"
