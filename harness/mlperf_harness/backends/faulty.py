"""Test-only wrappers that make a correct backend misbehave, so the audits can be seen to fail."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .base import Backend, TensorSpec


class _Wrapper(Backend):
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.consumes_input = inner.consumes_input

    def load(self, model_path: Path, batch_size: int, precision: str, *, output_name: str | None = None) -> None:
        self.inner.load(model_path, batch_size, precision, output_name=output_name)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.predict(batch)

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
        deadline = time.monotonic() + self.seconds
        out = self.inner.predict(batch)
        time.sleep(max(0.0, deadline - time.monotonic()))
        return out


class CorruptOutputs(_Wrapper):
    """Delegates to ``inner`` but shifts every output by one: wrong answers, same shape and speed.

    Used for performance-mode runs only, which is exactly what TEST01 must catch.
    """

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self.inner.predict(batch)
        return out + np.ones(1, dtype=out.dtype)
