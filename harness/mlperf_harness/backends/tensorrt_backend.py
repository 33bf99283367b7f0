"""TensorRT: engine build from ONNX (precision, INT8 calibration cache, one optimisation profile
per batch size) and a runtime on cuda-python buffers and streams.

Untested on the project's machines: TensorRT cannot be installed there (see BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HarnessError
from .base import ModelBackend, TensorSpec
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
        # int8 engines take the preprocessed int8 samples as they are: input scale per benchmark.
        self.int8_input_scale: float | None = None

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

    def build_engine(self, model_path: Path, out_dir: Path, batch_size: int, precision: str) -> Path:
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
        inp = network.get_input(0)
        if precision == "int8" and self.int8_input_scale:
            inp.dtype = trt.int8
            inp.dynamic_range = (-128 * self.int8_input_scale, 127 * self.int8_input_scale)
        profile = builder.create_optimization_profile()
        tail = tuple(inp.shape)[1:]
        profile.set_shape(inp.name, (1, *tail), (batch_size, *tail), (batch_size, *tail))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise HarnessError(f"{model_path.name}: TensorRT engine build failed ({precision}, batch {batch_size})")
        target = out_dir / f"{model_path.stem}-{precision}-b{batch_size}.plan"
        target.write_bytes(bytes(plan))
        return target

    def load(self, model_path: Path, batch_size: int, precision: str, *, output_name: str | None = None) -> None:
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
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        out_name = output_name or outputs[0]
        for n in names:
            shape = tuple(batch_size if d < 0 else d for d in self._engine.get_tensor_shape(n))
            dtype = _TRT_DTYPES[self._engine.get_tensor_dtype(n).name]
            self._bufs[n] = DeviceBuffer(shape, dtype)
            self._context.set_tensor_address(n, self._bufs[n].ptr)
            spec = TensorSpec(n, (None, *shape[1:]), dtype)
            if n == inputs[0]:
                self._in = spec
            elif n == out_name:
                self._out = spec

    def predict(self, batch: np.ndarray) -> np.ndarray:
        assert self._in is not None and self._out is not None and self._stream is not None
        n = len(batch)
        ibuf, obuf = self._bufs[self._in.name], self._bufs[self._out.name]
        ibuf.host[:n] = batch
        self._context.set_input_shape(self._in.name, (n, *ibuf.shape[1:]))
        ibuf.to_device(self._stream, batch.nbytes)
        self._context.execute_async_v3(self._stream.handle)
        row = obuf.nbytes // obuf.shape[0]
        obuf.to_host(self._stream, row * n)
        self._stream.synchronize()
        return obuf.host[:n]

    def device(self) -> str:
        return f"cuda:0 {device_name(0)}"

    def close(self) -> None:
        for buf in self._bufs.values():
            buf.close()
        if self._stream:
            self._stream.close()
