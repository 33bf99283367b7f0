"""Device buffers and streams through NVIDIA's cuda-python, kept apart from TensorRT.

Exercisable on any CUDA GPU without TensorRT: ``python -m mlperf_harness.backends.cuda_buffers``
round-trips an array through the device.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        from cuda import cudart  # older cuda-python

        return cudart


def check(result: Any) -> Any:
    """cuda-python returns (err, value...) tuples; raise on error, return the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        rt = _cudart()
        _, name = rt.cudaGetErrorName(err)
        raise RuntimeError(f"CUDA error {int(err)}: {name.decode() if isinstance(name, bytes) else name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


class Stream:
    def __init__(self) -> None:
        self.rt = _cudart()
        self.handle = check(self.rt.cudaStreamCreate())

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        if self.handle is not None:
            check(self.rt.cudaStreamDestroy(self.handle))
            self.handle = None


class DeviceBuffer:
    """A device allocation with a pinned host mirror of the same shape and dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any] | str) -> None:
        self.rt = _cudart()
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.ptr = int(check(self.rt.cudaMalloc(self.nbytes)))
        host_ptr = int(check(self.rt.cudaMallocHost(self.nbytes)))
        self._host_ptr = host_ptr
        buf = (ctypes.c_byte * self.nbytes).from_address(host_ptr)
        self.host = np.frombuffer(memoryview(buf), dtype=self.dtype).reshape(shape)

    def to_device(self, stream: Stream, nbytes: int | None = None) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.rt.cudaMemcpyAsync(self.ptr, self._host_ptr, nbytes or self.nbytes, kind, stream.handle))

    def to_host(self, stream: Stream, nbytes: int | None = None) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.rt.cudaMemcpyAsync(self._host_ptr, self.ptr, nbytes or self.nbytes, kind, stream.handle))

    def close(self) -> None:
        if self.ptr:
            check(self.rt.cudaFree(self.ptr))
            check(self.rt.cudaFreeHost(self._host_ptr))
            self.ptr = 0


def device_name(index: int = 0) -> str:
    rt = _cudart()
    props = check(rt.cudaGetDeviceProperties(index))
    name = props.name
    return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


def self_test() -> None:
    stream = Stream()
    buf = DeviceBuffer((4, 3), "float32")
    buf.host[:] = np.arange(12, dtype=np.float32).reshape(4, 3)
    buf.to_device(stream)
    buf.host[:] = 0
    buf.to_host(stream)
    stream.synchronize()
    assert np.array_equal(buf.host, np.arange(12, dtype=np.float32).reshape(4, 3)), "round trip mismatch"
    print(f"cuda round trip ok on {device_name()}")
    buf.close()
    stream.close()


if __name__ == "__main__":
    self_test()
