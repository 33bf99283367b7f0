"""Test-only wrappers around a correct backend: paced (stable timing), corrupting and caching (so
the audits can be seen to fail), and host-resident (the SUT's start_from_device path without a GPU)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import Backend, TensorSpec

if TYPE_CHECKING:
    from ..config import HarnessConfig


class _Wrapper(Backend):
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.consumes_input = inner.consumes_input

    def configure(self, cfg: HarnessConfig) -> None:
        self.inner.device_index = self.device_index
        self.inner.configure(cfg)

    def load(self, model_path: Path, batch_size: int, precision: str, *, output_name: str | None = None) -> None:
        self.inner.load(model_path, batch_size, precision, output_name=output_name)

    def reserve_samples(self, capacity: int) -> bool:
        self.resident = self.inner.reserve_samples(capacity)
        return self.resident

    def stage_samples(self, samples: np.ndarray) -> None:
        self.inner.stage_samples(samples)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.predict(batch)

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.inner.predict_rows(rows)

    @property
    def input_spec(self) -> TensorSpec:
        return self.inner.input_spec

    @property
    def output_spec(self) -> TensorSpec:
        return self.inner.output_spec

    def device(self) -> str:
        return self.inner.device()

    def describe(self) -> str:
        return f"{self.inner.describe()} ({type(self).__name__})"


class Paced(_Wrapper):
    """Real outputs, but every batch takes at least ``seconds``: performance that a busy shared
    machine cannot disturb, for tests of the performance criteria of the audits."""

    def __init__(self, inner: Backend, seconds: float) -> None:
        super().__init__(inner)
        self.seconds = seconds

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._paced(self.inner.predict, batch)

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._paced(self.inner.predict_rows, rows)

    def _paced(self, run: Callable[[np.ndarray], np.ndarray], arg: np.ndarray) -> np.ndarray:
        deadline = time.monotonic() + self.seconds
        out = run(arg)
        time.sleep(max(0.0, deadline - time.monotonic()))
        return out


class CorruptOutputs(_Wrapper):
    """Delegates to ``inner`` but shifts every output by one: wrong answers, same shape and speed.

    Used for performance-mode runs only, which is exactly what TEST01 must catch.
    """

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self.inner.predict(batch)
        return out + np.ones(1, dtype=out.dtype)

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        out = self.inner.predict_rows(rows)
        return out + np.ones(1, dtype=out.dtype)


class CachingOutputs(_Wrapper):
    """Answers a sample it has seen before from a cache, without running the model: the result
    caching that TEST04 exists to catch (its same-sample run gets many times faster)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.cache: dict[bytes, np.ndarray] = {}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        keys = [row.tobytes() for row in batch]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            for i, out in zip(missing, self.inner.predict(batch[missing]), strict=True):
                self.cache[keys[i]] = out
        return np.stack([self.cache[k] for k in keys])


class HostResident(_Wrapper):
    """Takes the SUT's device-resident path with the staged samples kept on the host: what a GPU
    backend does with device memory, checkable on any machine."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.samples: np.ndarray | None = None
        self.stages = 0
        self.rows_served = 0

    def reserve_samples(self, capacity: int) -> bool:
        self.resident = True
        return True

    def stage_samples(self, samples: np.ndarray) -> None:
        self.samples = samples.copy()
        self.stages += 1

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        assert self.samples is not None, "rows predicted before any samples were staged"
        self.rows_served += len(rows)
        return self.inner.predict(self.samples[rows])
