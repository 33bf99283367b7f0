"""The query sample library: a memory-mapped preprocessed array, and a RAM copy of exactly the
samples LoadGen asks to load (the performance sample set). Backends that keep samples in device
memory subscribe to ``on_load`` and get each loaded set once, to copy it over."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import HarnessError


def open_samples(path: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Memory-map ``path`` and check it holds (N, *shape) of ``dtype``; one-line error otherwise."""
    if not path.is_file():
        raise HarnessError(f"{path}: missing preprocessed data; run preprocess first")
    try:
        data = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise HarnessError(f"{path}: corrupt or truncated .npy ({str(exc).splitlines()[0][:120]})") from None
    if data.ndim != len(shape) + 1 or tuple(data.shape[1:]) != tuple(shape):
        want = ", ".join(map(str, shape))
        raise HarnessError(f"{path}: wrong tensor shape {tuple(data.shape)}, expected (N, {want})")
    if data.dtype != np.dtype(dtype):
        raise HarnessError(f"{path}: wrong dtype {data.dtype}, expected {np.dtype(dtype).name}")
    if len(data) == 0:
        raise HarnessError(f"{path}: holds no samples")
    return data


class SampleLibrary:
    def __init__(self, data: np.ndarray, performance_sample_count: int) -> None:
        self.data = data
        self.total = len(data)
        self.performance_count = min(performance_sample_count, self.total)
        # qsl index -> row of ``ram``; -1 when not loaded.
        self.row = np.full(self.total, -1, dtype=np.int64)
        self.ram = np.empty((0, *data.shape[1:]), dtype=data.dtype)
        self.loads = 0
        self.on_load: list[Callable[[np.ndarray], None]] = []

    def load(self, indices: list[int]) -> None:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx)  # read the memory map in file order, place rows in request order
        ram = np.empty((len(idx), *self.data.shape[1:]), dtype=self.data.dtype)
        ram[order] = self.data[idx[order]]
        self.ram = ram
        self.row[:] = -1
        self.row[idx] = np.arange(len(idx))
        self.loads += 1
        for stage in self.on_load:
            stage(ram)

    def unload(self, indices: list[int]) -> None:
        self.row[np.asarray(indices, dtype=np.int64)] = -1
        if not (self.row >= 0).any():
            self.ram = np.empty((0, *self.data.shape[1:]), dtype=self.data.dtype)

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows of the loaded set that hold the samples of ``indices``."""
        rows = self.row[indices]
        if (rows < 0).any():
            raise RuntimeError(f"sample {int(indices[rows < 0][0])} was issued but not loaded")
        return rows

    def gather(self, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy the samples of ``indices`` into ``out[:n]`` (a preallocated batch buffer)."""
        rows = self.rows(indices)
        n = len(indices)
        np.take(self.ram, rows, axis=0, out=out[:n])
        return out[:n]
