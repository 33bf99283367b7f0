"""A backend that answers at once with the benchmark's real output tensors (zeros): measures
the harness, not a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import Backend, Tensors, TensorSpec


class NullBackend(Backend):
    name = "null"
    consumes_input = False

    def __init__(self, outputs: Sequence[TensorSpec], inputs: Sequence[TensorSpec] = ()) -> None:
        self._outs = tuple(outputs)
        self._ins = tuple(inputs)
        self._zeros: dict[str, np.ndarray] = {}
        self._capacity = -1

    def load(self, model_path: Path, batch_size: int, precision: str, *, outputs: Sequence[str] = ()) -> None:
        self._grow(batch_size)

    def _grow(self, n: int) -> None:
        self._zeros = {s.name: s.zeros(n) for s in self._outs}
        self._capacity = n

    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]:
        # The batch size is the first dimension of whatever the SUT passed (a placeholder).
        n = len(next(iter(feeds.values()))) if feeds else 0
        if n > self._capacity:
            self._grow(n)
        return {name: z[:n] for name, z in self._zeros.items()}  # views: no allocation per batch

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._ins

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._outs

    @classmethod
    def version(cls) -> str:
        return "1"
