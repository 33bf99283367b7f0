"""Test-only wrappers around a correct backend: paced (stable timing), corrupting and caching (so
the audits can be seen to fail), and host-resident (the SUT's start_from_device path without a GPU)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .base import Backend, Tensors, TensorSpec

if TYPE_CHECKING:
    from ..config import HarnessConfig

Outputs = dict[str, np.ndarray]
A = TypeVar("A")


class _Wrapper(Backend):
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.consumes_input = inner.consumes_input

    def configure(self, cfg: HarnessConfig) -> None:
        self.inner.device_index = self.device_index
        self.inner.configure(cfg)

    def load(self, model_path: Path, batch_size: int, precision: str, *, outputs: Sequence[str] = ()) -> None:
        self.inner.load(model_path, batch_size, precision, outputs=outputs)
        self.fixed_batch = self.inner.fixed_batch

    def reserve_samples(self, capacity: int) -> bool:
        self.resident = self.inner.reserve_samples(capacity)
        return self.resident

    def stage_samples(self, samples: Tensors) -> None:
        self.inner.stage_samples(samples)

    def predict(self, feeds: Tensors) -> Outputs:
        return self.inner.predict(feeds)

    def predict_rows(self, rows: np.ndarray) -> Outputs:
        return self.inner.predict_rows(rows)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self.inner.input_specs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self.inner.output_specs

    def device(self) -> str:
        return self.inner.device()

    def describe(self) -> str:
        return f"{self.inner.describe()} ({type(self).__name__})"

    def close(self) -> None:
        self.inner.close()


class Paced(_Wrapper):
    """Real outputs, but every batch takes at least ``seconds``: performance that a busy shared
    machine cannot disturb, for tests of the performance criteria of the audits."""

    def __init__(self, inner: Backend, seconds: float) -> None:
        super().__init__(inner)
        self.seconds = seconds

    def predict(self, feeds: Tensors) -> Outputs:
        return self._paced(self.inner.predict, feeds)

    def predict_rows(self, rows: np.ndarray) -> Outputs:
        return self._paced(self.inner.predict_rows, rows)

    def _paced(self, run: Callable[[A], Outputs], arg: A) -> Outputs:
        deadline = time.monotonic() + self.seconds
        out = run(arg)
        time.sleep(max(0.0, deadline - time.monotonic()))
        return out


def _shifted(outputs: Outputs) -> Outputs:
    return {name: out + np.ones(1, dtype=out.dtype) for name, out in outputs.items()}


class CorruptOutputs(_Wrapper):
    """Delegates to ``inner`` but shifts every output by one: wrong answers, same shape and speed.

    Used for performance-mode runs only, which is exactly what TEST01 must catch.
    """

    def predict(self, feeds: Tensors) -> Outputs:
        return _shifted(self.inner.predict(feeds))

    def predict_rows(self, rows: np.ndarray) -> Outputs:
        return _shifted(self.inner.predict_rows(rows))


def _row_keys(feeds: Tensors) -> list[bytes]:
    """One key per batch row: the bytes of every input tensor's row."""
    arrays = list(feeds.values())
    return [b"".join(a[i].tobytes() for a in arrays) for i in range(len(arrays[0]))]


class CachingOutputs(_Wrapper):
    """Answers a sample it has seen before from a cache, without running the model: the result
    caching that TEST04 exists to catch (its same-sample run gets many times faster)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.cache: dict[bytes, dict[str, np.ndarray]] = {}

    def predict(self, feeds: Tensors) -> Outputs:
        keys = _row_keys(feeds)
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            out = self.inner.predict({name: a[missing] for name, a in feeds.items()})
            for j, i in enumerate(missing):
                self.cache[keys[i]] = {name: o[j] for name, o in out.items()}
        names = self.cache[keys[0]].keys()
        return {name: np.stack([self.cache[k][name] for k in keys]) for name in names}


class HostResident(_Wrapper):
    """Takes the SUT's device-resident path with the staged samples kept on the host: what a GPU
    backend does with device memory, checkable on any machine."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.samples: dict[str, np.ndarray] | None = None
        self.stages = 0
        self.rows_served = 0

    def reserve_samples(self, capacity: int) -> bool:
        self.resident = True
        return True

    def stage_samples(self, samples: Tensors) -> None:
        self.samples = {name: a.copy() for name, a in samples.items()}
        self.stages += 1

    def predict_rows(self, rows: np.ndarray) -> Outputs:
        assert self.samples is not None, "rows predicted before any samples were staged"
        self.rows_served += len(rows)
        return self.inner.predict({name: a[rows] for name, a in self.samples.items()})
