"""Preprocessed samples on disk: named tensors, fixed-shape or ragged, in QSL order.

A store is a directory with ``samples.json`` (written last: what the store holds) and, per tensor:

- fixed shape (every sample the same): ``<tensor>.npy``, (N, *shape), memory-mapped;
- ragged (a dimension varies): ``<tensor>.bin``, every sample's elements one after the other,
  with ``<tensor>.offsets.npy`` (N + 1 element offsets) and ``<tensor>.shapes.npy`` (N, ndim).
  A reader takes a ragged tensor whose samples all have one shape as a fixed one.

So bert's three (384,) int32 tensors, dlrm's (rows, 13) and (rows, 26) row blocks, rnnt's
(frames, 240) features and 3d-unet's volumes of any size are all stored without padding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from .backends.base import TensorSpec
from .errors import HarnessError
from .fsutil import atomic_write_json, temp_path_for

MANIFEST = "samples.json"
Sample = Mapping[str, np.ndarray]


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype, "scale": spec.scale}


def _spec_of(entry: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(entry["name"], tuple(entry["shape"]), entry["dtype"], entry.get("scale"))


class SampleWriter:
    """Writes ``count`` samples in order (``append``), then the manifest (``close``). Each file is
    a temp file until every sample is in, so a crash leaves no store that looks complete."""

    def __init__(self, out_dir: Path, specs: Sequence[TensorSpec], count: int, **facts: Any) -> None:
        self.out_dir, self.specs, self.count, self.facts = out_dir, tuple(specs), count, facts
        self.n = 0
        self._stack = ExitStack()
        self._fixed: dict[str, np.ndarray] = {}
        self._raw: dict[str, IO[bytes]] = {}
        self._offsets: dict[str, list[int]] = {}
        self._shapes: dict[str, list[tuple[int, ...]]] = {}
        self._tmp: dict[Path, Path] = {}
        for spec in self.specs:
            stem = _stem(spec.name)
            if spec.ragged:
                tmp = self._temp(out_dir / f"{stem}.bin")
                self._raw[spec.name] = self._stack.enter_context(tmp.open("wb"))
                self._offsets[spec.name], self._shapes[spec.name] = [0], []
            else:
                tmp = self._temp(out_dir / f"{stem}.npy")
                self._fixed[spec.name] = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=spec.dtype, shape=(count, *spec.concrete())
                )

    def _temp(self, final: Path) -> Path:
        tmp = self._stack.enter_context(temp_path_for(final))
        self._tmp[final] = tmp
        return tmp

    def append(self, sample: Sample) -> None:
        if self.n >= self.count:
            raise HarnessError(f"{self.out_dir}: more than the {self.count} samples announced")
        for spec in self.specs:
            a = sample.get(spec.name)
            if a is None:
                raise HarnessError(f"sample {self.n}: no tensor {spec.name!r} (preprocessing must give every input)")
            if len(a.shape) != len(spec.shape) or any(
                d is not None and d != x for d, x in zip(spec.shape, a.shape, strict=True)
            ):
                raise HarnessError(f"sample {self.n}: {spec.name} has shape {a.shape}, expected {spec.shape}")
            if spec.ragged:
                data = np.ascontiguousarray(a, dtype=spec.dtype)
                self._raw[spec.name].write(data.tobytes())
                self._offsets[spec.name].append(self._offsets[spec.name][-1] + data.size)
                self._shapes[spec.name].append(tuple(a.shape))
            else:
                self._fixed[spec.name][self.n] = a
        self.n += 1

    def close(self) -> list[Path]:
        """Finish every file and write the manifest last; returns the store's files."""
        if self.n != self.count:
            raise HarnessError(f"{self.out_dir}: {self.n} samples written, {self.count} announced")
        for arr in self._fixed.values():
            arr.flush()  # type: ignore[attr-defined]  # a memmap
        self._fixed.clear()
        for spec in self.specs:
            if spec.ragged:
                self._raw[spec.name].flush()
                stem = self.out_dir / _stem(spec.name)
                shapes = np.asarray(self._shapes[spec.name], np.int64).reshape(self.count, len(spec.shape))
                for suffix, arr in (
                    (".offsets.npy", np.asarray(self._offsets[spec.name], np.int64)),
                    (".shapes.npy", shapes),
                ):
                    with self._temp(Path(f"{stem}{suffix}")).open("wb") as fh:  # np.save would add .npy to a name
                        np.save(fh, arr)
        self._stack.close()  # the temp files replace their targets here
        manifest = {"count": self.count, "tensors": [_spec_json(s) for s in self.specs], **self.facts}
        atomic_write_json(self.out_dir / MANIFEST, manifest)
        return [*self._tmp, self.out_dir / MANIFEST]

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self._fixed.clear()
            self._stack.__exit__(kind, exc, tb)  # temp files removed, targets untouched


def write_samples(
    out_dir: Path, specs: Sequence[TensorSpec], samples: Iterator[Sample], count: int, **facts: Any
) -> list[Path]:
    with SampleWriter(out_dir, specs, count, **facts) as writer:
        for sample in samples:
            writer.append(sample)
        return writer.close()


class SampleStore:
    """A written store, opened for reading: fixed tensors memory-mapped, ragged ones by offsets."""

    def __init__(self, directory: Path, expected: Sequence[TensorSpec] = ()) -> None:
        self.dir = directory
        manifest = directory / MANIFEST
        if not manifest.is_file():
            raise HarnessError(f"{manifest}: missing preprocessed data; run preprocess first")
        try:
            meta = json.loads(manifest.read_text())
            self.count = int(meta["count"])
            self.specs = tuple(_spec_of(t) for t in meta["tensors"])
        except (ValueError, KeyError, TypeError) as exc:
            raise HarnessError(f"{manifest}: unreadable manifest ({exc}); run preprocess again") from None
        self.facts = {k: v for k, v in meta.items() if k not in ("count", "tensors")}
        self._check(expected)
        self.fixed: dict[str, np.ndarray] = {}
        self._flat: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        self.shapes: dict[str, np.ndarray] = {}
        if self.count == 0:
            raise HarnessError(f"{manifest}: holds no samples")
        for spec in self.specs:
            stem = directory / _stem(spec.name)
            if not spec.ragged:
                self.fixed[spec.name] = _load(Path(f"{stem}.npy"), (self.count, *spec.concrete()), spec.dtype)
                continue
            offsets = _load(Path(f"{stem}.offsets.npy"), (self.count + 1,), "int64")
            shapes = _load(Path(f"{stem}.shapes.npy"), (self.count, len(spec.shape)), "int64")
            flat = _raw(Path(f"{stem}.bin"), spec.dtype, int(offsets[-1]))
            if (shapes == shapes[0]).all():
                # Every sample one shape (ssd-resnet34's images, whose side the model sets): read as a
                # fixed tensor, so runs gather its batches into buffers and can keep it on the device.
                self.fixed[spec.name] = flat.reshape(self.count, *shapes[0].tolist())
            else:
                self._offsets[spec.name], self.shapes[spec.name], self._flat[spec.name] = offsets, shapes, flat

    def _check(self, expected: Sequence[TensorSpec]) -> None:
        have = {s.name: s for s in self.specs}
        for want in expected:
            got = have.get(want.name)
            if got is None:
                raise HarnessError(f"{self.dir / MANIFEST}: no tensor {want.name!r}; run preprocess again")
            if (got.shape, got.dtype) != (want.shape, want.dtype):
                raise HarnessError(
                    f"{self.dir / MANIFEST}: {want.name} is {got.dtype}{list(got.shape)}, expected "
                    f"{want.dtype}{list(want.shape)}; run preprocess again"
                )

    @property
    def ragged(self) -> bool:
        """Whether a tensor's samples differ in shape (a ragged spec whose samples share one is fixed)."""
        return bool(self._flat)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        out = {name: arr[i] for name, arr in self.fixed.items()}
        for name, flat in self._flat.items():
            off = self._offsets[name]
            out[name] = flat[off[i] : off[i + 1]].reshape(self.shapes[name][i])
        return out

    def leading(self, name: str) -> np.ndarray:
        """Each sample's first dimension of tensor ``name`` (dlrm: the rows of a user's ads)."""
        if name in self.shapes:
            return self.shapes[name][:, 0]
        return np.full(self.count, self.fixed[name].shape[1], dtype=np.int64)


def _load(path: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if not path.is_file():
        raise HarnessError(f"{path}: missing preprocessed data; run preprocess first")
    try:
        data = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise HarnessError(f"{path}: corrupt or truncated .npy ({str(exc).splitlines()[0][:120]})") from None
    if tuple(data.shape) != shape:
        raise HarnessError(f"{path}: wrong tensor shape {tuple(data.shape)}, expected {shape}; run preprocess again")
    if data.dtype != np.dtype(dtype):
        raise HarnessError(f"{path}: wrong dtype {data.dtype}, expected {np.dtype(dtype).name}; run preprocess again")
    return data


def _raw(path: Path, dtype: str, count: int) -> np.ndarray:
    if not path.is_file():
        raise HarnessError(f"{path}: missing preprocessed data; run preprocess first")
    size = path.stat().st_size
    want = count * np.dtype(dtype).itemsize
    if size != want:
        raise HarnessError(f"{path}: {size} bytes, expected {want} (truncated?); run preprocess again")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class Packed:
    """A ragged tensor of a set of samples in one array: their rows one after the other (the
    samples agree on every dimension but the first), each sample's first row in ``start`` and
    its rows in ``count``."""

    def __init__(self, data: np.ndarray, start: np.ndarray, count: np.ndarray) -> None:
        self.data, self.start, self.count = data, start, count

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> Packed | None:
        """``arrays`` packed, or None where they differ beyond their first dimension (or dtype)."""
        like = arrays[0]
        if like.ndim == 0 or any(a.shape[1:] != like.shape[1:] or a.dtype != like.dtype for a in arrays):
            return None
        count = np.array([len(a) for a in arrays], dtype=np.int64)
        return cls(np.concatenate(arrays), np.cumsum(count) - count, count)

    def sample(self, i: int) -> np.ndarray:
        return self.data[self.start[i] : self.start[i] + self.count[i]]


class SampleList(list[dict[str, np.ndarray]]):
    """A batch's samples for a ragged collate: each sample's tensors, as a plain list is, and two
    ways to build the batch that cost a few numpy calls, not a few per sample.

    - ``rows(name)``: the samples' rows of a tensor, one after the other. Where the samples come
      from the QSL's loaded set (``packed``: the set's ``Packed`` tensors, ``at``: the samples'
      places in it), that is one ``np.take``; else a concatenate.
    - ``buffer(key, shape, dtype)``: an array for the batch, from ``scratch`` where the caller
      gives one (a SUT worker's own, which its previous batch is done with), else a new one.

    In the SUT each numpy call on a piece of a sample lets go of the GIL and waits to get it back
    from the other threads (dlrm on a GPU: its collate was half its workers' time, 2026-12-05;
    ``benchmarks/dlrm_collate.py``); the scratch spares a worker tens of MB of new arrays a batch."""

    def __init__(
        self,
        samples: Sequence[dict[str, np.ndarray]],
        packed: Mapping[str, Packed] | None = None,
        at: np.ndarray | None = None,
        scratch: dict[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(samples)
        self.packed = packed or {}
        self.at = at
        self.scratch = scratch

    @classmethod
    def of(cls, samples: Sequence[dict[str, np.ndarray]]) -> SampleList:
        """``samples`` as a SampleList: itself where it is one (the SUT's), else a plain one."""
        return samples if isinstance(samples, SampleList) else cls(samples)

    def rows(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """Tensor ``name`` of every sample, concatenated along the first axis (into ``out``)."""
        packed = self.packed.get(name)
        if packed is None or self.at is None:
            return np.concatenate([s[name] for s in self], out=out)
        counts, starts = packed.count[self.at], packed.start[self.at]
        # Each batch row's row in the packed array: its sample's start, plus its place in the sample.
        first = np.cumsum(counts) - counts
        index = np.repeat(starts - first, counts) + np.arange(int(counts.sum()))
        # mode="clip": the index is in range by construction; "raise" would gather into a temporary.
        return np.take(packed.data, index, axis=0, out=out, mode="clip")

    def buffer(self, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array of ``shape``: the front of a scratch array kept under ``key``
        (grown when too small), or a new one without scratch."""
        if self.scratch is None:
            return np.empty(shape, dtype=dtype)
        need = int(np.prod(shape))
        buf = self.scratch.get(key)
        if buf is None or buf.dtype != np.dtype(dtype) or buf.size < need:
            buf = self.scratch[key] = np.empty(need, dtype=dtype)
        return buf[:need].reshape(shape)
