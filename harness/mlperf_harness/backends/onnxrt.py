"""ONNX Runtime: the CPU default; uses the CUDA execution provider when the build has it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from .base import ModelBackend, Tensors, TensorSpec, pick_outputs

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


def _bad_model(path: Path, exc: Exception) -> HarnessError:
    return HarnessError(f"{path.name}: not a loadable ONNX model ({str(exc).splitlines()[0][:160]})")


def _spec(arg: object) -> TensorSpec:
    """A graph input or output as a per-sample spec (its first dimension is the batch)."""
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape[1:])  # type: ignore[attr-defined]
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, "float32"))  # type: ignore[attr-defined]


class OnnxRuntimeBackend(ModelBackend):
    name = "onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads
        self._session: object | None = None
        self._names: list[str] = []
        self._provider = "CPUExecutionProvider"

    @classmethod
    def version(cls) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "onnxruntime is not installed"
        return True, ""

    def _options(self) -> object:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = self._threads or int(os.environ.get("MLPERF_ORT_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        return opts

    def load(self, model_path: Path, batch_size: int, precision: str, *, outputs: Sequence[str] = ()) -> None:
        import onnxruntime as ort

        if precision not in ("fp32",):
            raise HarnessError(
                f"{model_path.name}: onnxruntime runs fp32 here, not {precision}; use tensorrt or pytorch"
            )
        if not model_path.is_file():
            raise HarnessError(f"{model_path}: missing model file")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            sess = ort.InferenceSession(str(model_path), self._options(), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise _bad_model(model_path, exc) from None
        self._session = sess
        self._provider = sess.get_providers()[0]
        graph_outputs = {o.name: o for o in sess.get_outputs()}
        self._names = pick_outputs(list(graph_outputs), outputs, model_path.name)
        self._ins = tuple(_spec(i) for i in sess.get_inputs())
        first = sess.get_inputs()[0].shape[0] if sess.get_inputs() and sess.get_inputs()[0].shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None
        self._outs = tuple(_spec(graph_outputs[n]) for n in self._names)

    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]:
        assert self._session is not None, "load() first"
        out = self._session.run(self._names, dict(feeds))  # type: ignore[attr-defined]
        return {name: np.asarray(o) for name, o in zip(self._names, out, strict=True)}

    def build_engine(
        self, model_path: Path, out_dir: Path, batch_size: int, precision: str, inputs: Sequence[TensorSpec] = ()
    ) -> Path:
        """Save ORT's optimised graph (basic level, portable across CPUs) as the 'engine'."""
        import onnxruntime as ort

        target = out_dir / f"{model_path.stem}.ort.onnx"  # one per part of a multi-part model
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(target)
        try:
            ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise _bad_model(model_path, exc) from None
        return target

    def device(self) -> str:
        if self._provider == "CUDAExecutionProvider":
            return "cuda:0"
        return "cpu"
