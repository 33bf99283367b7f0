"""The query sample library: a sample store on disk, and a RAM copy of exactly the samples
LoadGen asks to load (the performance sample set). Fixed-shape tensors are copied into one array
per tensor (a batch is then a slice of it, or one ``np.take`` per tensor into a preallocated
buffer); ragged ones whose samples differ only in their first dimension are packed one array
per tensor as well (``Packed``: a batch's rows are one ``np.take``), any other as one array per
sample. Backends that keep samples in device memory subscribe to
``on_load`` and get each loaded set of fixed-shape tensors once, to copy it over."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..backends.base import Tensors
from ..samples import Packed, SampleList, SampleStore


class SampleLibrary:
    def __init__(
        self,
        store: SampleStore,
        performance_sample_count: int,
        cost_tensor: str | None = None,
        lengths: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.total = store.count
        self.performance_count = min(performance_sample_count, self.total)
        # What one sample costs in a batch: 1, or its rows (the leading dimension of ``cost_tensor``).
        self.cost = store.leading(cost_tensor) if cost_tensor else None
        # What orders a query's samples before batching (``Benchmark.lengths``), or None.
        self.length = lengths
        # qsl index -> row of the loaded set; -1 when not loaded.
        self.row = np.full(self.total, -1, dtype=np.int64)
        self.ram: dict[str, np.ndarray] = {}
        self.packed: dict[str, Packed] = {}  # ragged tensors of the loaded set, one array each
        self.ragged: list[dict[str, np.ndarray]] = []  # per loaded row: its ragged tensors (views of packed ones)
        self.loads = 0
        self.on_load: list[Callable[[Tensors], None]] = []

    def load(self, indices: list[int]) -> None:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx)  # read the memory maps in file order, place rows in request order
        ram: dict[str, np.ndarray] = {}
        for name, data in self.store.fixed.items():
            rows = np.empty((len(idx), *data.shape[1:]), dtype=data.dtype)
            rows[order] = data[idx[order]]
            ram[name] = rows
        if self.store.ragged:
            fixed = set(ram)
            read = [{k: v for k, v in self.store.sample(int(i)).items() if k not in fixed} for i in idx]
            packs = {name: Packed.of([r[name] for r in read]) for name in read[0]}
            self.packed = {name: p for name, p in packs.items() if p is not None}
            self.ragged = [
                {k: self.packed[k].sample(row) if k in self.packed else np.array(v) for k, v in r.items()}
                for row, r in enumerate(read)
            ]
        self.ram = ram
        self.row[:] = -1
        self.row[idx] = np.arange(len(idx))
        self.loads += 1
        for stage in self.on_load:
            stage(ram)

    def unload(self, indices: list[int]) -> None:
        self.row[np.asarray(indices, dtype=np.int64)] = -1
        if not (self.row >= 0).any():
            self.ram = {}
            self.ragged = []
            self.packed = {}

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows of the loaded set that hold the samples of ``indices``."""
        rows = self.row[indices]
        if (rows < 0).any():
            raise RuntimeError(f"sample {int(indices[rows < 0][0])} was issued but not loaded")
        return rows

    def buffers(self, batch_size: int) -> dict[str, np.ndarray]:
        """Preallocated batch buffers for the fixed-shape tensors (one set per worker)."""
        return {
            name: np.empty((batch_size, *data.shape[1:]), dtype=data.dtype) for name, data in self.store.fixed.items()
        }

    def in_runs(self, indices: np.ndarray) -> np.ndarray:
        """An order of ``indices`` (a query that repeats the loaded samples) in which they come as
        runs of consecutive rows: each row's first occurrence in row order, then each second one,
        and so on. Cut in batches, most batches are then a slice of the loaded set (``gather``)."""
        rows = self.rows(indices)
        by_row = np.argsort(rows, kind="stable")
        sorted_rows = rows[by_row]
        starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
        occurrence = np.empty(len(rows), dtype=np.int64)
        occurrence[by_row] = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        return np.lexsort((rows, occurrence))

    def gather(self, indices: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The fixed-shape tensors of ``indices``: copied into ``out[...][:n]``, or, where they are
        consecutive rows of the loaded set (``in_runs``), that slice of it, read-only (no copy)."""
        rows = self.rows(indices)
        n = len(indices)
        if n > 1 and rows[-1] - rows[0] == n - 1 and (np.diff(rows) == 1).all():
            views = {name: ram[rows[0] : rows[0] + n] for name, ram in self.ram.items()}
            for view in views.values():
                view.flags.writeable = False  # the loaded set itself: a backend must not write into it
            return views
        for name, ram in self.ram.items():
            # mode="clip": the rows are checked above; numpy's default ("raise") gathers into a
            # temporary and copies it into ``out`` (3x the time for ssd's 400x400 images here).
            np.take(ram, rows, axis=0, out=out[name][:n], mode="clip")
        return {name: buf[:n] for name, buf in out.items()}

    def samples(self, indices: np.ndarray, scratch: dict[str, np.ndarray] | None = None) -> SampleList:
        """Every tensor of each sample of ``indices`` (loaded copies), for ragged batching, with
        the packed tensors they come from and the caller's ``scratch`` (``SampleList``)."""
        rows = self.rows(indices)
        samples = [{**{k: v[r] for k, v in self.ram.items()}, **(self.ragged[r] if self.ragged else {})} for r in rows]
        return SampleList(samples, self.packed, rows, scratch)

    def costs(self, indices: np.ndarray) -> np.ndarray | None:
        return None if self.cost is None else self.cost[indices]
