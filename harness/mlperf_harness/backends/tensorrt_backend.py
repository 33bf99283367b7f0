"""TensorRT: engine build from ONNX (precision, INT8 calibration cache, one optimisation profile
per batch size) and a runtime on cuda-python buffers and streams.

Untested on the project's machines: TensorRT cannot be installed there (see BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HarnessError
from .base import ModelBackend, Tensors, TensorSpec, pick_outputs
from .cuda_buffers import DeviceBuffer, Stream, device_name

_TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BF16": "bfloat16",
    "BOOL": "bool",
}


def _trt() -> Any:
    try:
        import tensorrt

        return tensorrt
    except ImportError:
        raise HarnessError("tensorrt: the tensorrt Python package is not installed (GPU image only)") from None


class _Calibrator:
    """INT8 calibration: reads a cache when there is one, else calibrates on preprocessed batches."""

    def __new__(cls, cache: Path, batches: list[np.ndarray] | None) -> Any:
        trt = _trt()

        class Calib(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.cache, self.batches = cache, list(batches or [])
                self.buf: DeviceBuffer | None = None
                self.stream = Stream()

            def get_batch_size(self) -> int:
                return len(self.batches[0]) if self.batches else 1

            def get_batch(self, names: list[str]) -> list[int] | None:
                if not self.batches:
                    return None
                batch = self.batches.pop(0)
                if self.buf is None:
                    self.buf = DeviceBuffer(batch.shape, batch.dtype)
                self.buf.host[:] = batch
                self.buf.to_device(self.stream)
                self.stream.synchronize()
                return [self.buf.ptr]

            def read_calibration_cache(self) -> bytes | None:
                return self.cache.read_bytes() if self.cache.exists() else None

            def write_calibration_cache(self, data: bytes) -> None:
                self.cache.write_bytes(bytes(data))

        return Calib()


class TensorRTBackend(ModelBackend):
    name = "tensorrt"

    def __init__(self) -> None:
        self._engine: Any = None
        self._context: Any = None
        self._stream: Stream | None = None
        self._bufs: dict[str, DeviceBuffer] = {}
        self.calibration_batches: list[np.ndarray] | None = None
        self._out_names: list[str] = []

    @classmethod
    def version(cls) -> str:
        try:
            return str(_trt().__version__)
        except HarnessError:
            return "unavailable"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _trt()
        except HarnessError:
            return False, "TensorRT is not installed (it cannot be installed on the project's CPU machines)"
        try:
            import cuda  # noqa: F401
        except ImportError:
            return False, "cuda-python is not installed"
        return True, ""

    def build_engine(
        self, model_path: Path, out_dir: Path, batch_size: int, precision: str, inputs: Sequence[TensorSpec] = ()
    ) -> Path:
        trt = _trt()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise HarnessError(f"{model_path.name}: TensorRT cannot parse it ({errors[:200]})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _Calibrator(out_dir / "calibration.cache", self.calibration_batches)
        # One profile per batch size: min 1 so partial batches run without padding, opt = max = batch.
        scales = {s.name: s.scale for s in inputs if s.scale}
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            inp = network.get_input(i)
            if precision == "int8" and inp.name in scales:
                # int8 samples go in as they are: the benchmark's quantisation step gives the range.
                inp.dtype = trt.int8
                inp.dynamic_range = (-128 * scales[inp.name], 127 * scales[inp.name])
            tail = tuple(inp.shape)[1:]
            profile.set_shape(inp.name, (1, *tail), (batch_size, *tail), (batch_size, *tail))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise HarnessError(f"{model_path.name}: TensorRT engine build failed ({precision}, batch {batch_size})")
        target = out_dir / f"{model_path.stem}-{precision}-b{batch_size}.plan"
        target.write_bytes(bytes(plan))
        return target

    def load(self, model_path: Path, batch_size: int, precision: str, *, outputs: Sequence[str] = ()) -> None:
        trt = _trt()
        if model_path.suffix != ".plan":
            raise HarnessError(f"{model_path.name}: tensorrt runs a built engine (.plan); run build-engine first")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(model_path.read_bytes())
        if self._engine is None:
            raise HarnessError(f"{model_path.name}: not a TensorRT engine for this GPU / TensorRT version")
        self._context = self._engine.create_execution_context()
        self._stream = Stream()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out_names = pick_outputs([n for n in names if n not in ins], outputs, model_path.name)
        specs: dict[str, TensorSpec] = {}
        for n in names:
            shape = tuple(batch_size if d < 0 else d for d in self._engine.get_tensor_shape(n))
            dtype = _TRT_DTYPES[self._engine.get_tensor_dtype(n).name]
            self._bufs[n] = DeviceBuffer(shape, dtype)
            self._context.set_tensor_address(n, self._bufs[n].ptr)
            specs[n] = TensorSpec(n, tuple(shape[1:]), dtype)
        self._ins = tuple(specs[n] for n in ins)
        self._outs = tuple(specs[n] for n in self._out_names)

    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]:
        assert self._stream is not None, "load() first"
        n = len(next(iter(feeds.values())))
        for spec in self._ins:
            buf, batch = self._bufs[spec.name], feeds[spec.name]
            buf.host[:n] = batch
            self._context.set_input_shape(spec.name, (n, *buf.shape[1:]))
            buf.to_device(self._stream, batch.nbytes)
        self._context.execute_async_v3(self._stream.handle)
        for name in self._out_names:
            buf = self._bufs[name]
            buf.to_host(self._stream, buf.nbytes // buf.shape[0] * n)
        self._stream.synchronize()
        return {name: self._bufs[name].host[:n] for name in self._out_names}

    def device(self) -> str:
        return f"cuda:0 {device_name(0)}"

    def close(self) -> None:
        for buf in self._bufs.values():
            buf.close()
        if self._stream:
            self._stream.close()
