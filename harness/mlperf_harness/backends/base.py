"""The one interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..config import HarnessConfig


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None: the batch (or another dynamic) dimension
    dtype: str  # numpy dtype name


class Backend(ABC):
    """Load a model (or a built engine) once, then run batches.

    ``predict`` takes a batch of preprocessed samples (N, ...) and returns the benchmark's chosen
    output for those N samples, first dimension N. It is called from one worker thread at a time
    per backend instance.
    """

    name: str = "backend"
    # False for backends that never read input (null): the SUT then skips gathering samples,
    # which is what makes the null backend measure the harness and nothing else.
    consumes_input: bool = True
    # Which device of the host this instance runs on (cuda:<device_index>); set before ``load``.
    device_index: int = 0
    # True once ``reserve_samples`` accepted: the SUT then calls ``predict_rows`` with rows of
    # the loaded sample set, which ``stage_samples`` copied to the device (start_from_device).
    resident: bool = False

    def configure(self, cfg: HarnessConfig) -> None:  # noqa: B027 - optional hook
        """Take backend-specific settings from the harness config; called before ``load``."""

    @abstractmethod
    def load(
        self,
        model_path: Path,
        batch_size: int,
        precision: str,
        *,
        output_name: str | None = None,
    ) -> None: ...

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    @property
    @abstractmethod
    def input_spec(self) -> TensorSpec: ...

    @property
    @abstractmethod
    def output_spec(self) -> TensorSpec: ...

    @classmethod
    def version(cls) -> str:
        """Version of the runtime; part of the engine cache key."""
        return "0"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether the runtime can be used here, and why not."""
        return True, ""

    def device(self) -> str:
        return "cpu"

    def build_engine(self, model_path: Path, out_dir: Path, batch_size: int, precision: str) -> Path:
        """Turn the model into what ``load`` runs fastest; the default runs the model as is."""
        return model_path

    def warmup(self, batch_size: int, rounds: int = 2) -> None:
        shape = tuple(batch_size if d is None else d for d in self.input_spec.shape)
        dummy = np.zeros(shape, dtype=self.input_spec.dtype)
        for _ in range(rounds):
            self.predict(dummy)

    def reserve_samples(self, capacity: int) -> bool:
        """Keep up to ``capacity`` loaded samples in device memory; False where the backend cannot
        (the SUT then gathers samples on the host and calls ``predict``). Called after ``load``."""
        return False

    def stage_samples(self, samples: np.ndarray) -> None:
        """Copy a newly loaded sample set (rows in load order) to the device."""
        raise NotImplementedError(f"{self.name}: no device-resident samples")

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """``predict`` for the staged samples at ``rows``."""
        raise NotImplementedError(f"{self.name}: no device-resident samples")

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def describe(self) -> str:
        return f"{self.name} {self.version()}"


class ModelBackend(Backend):
    """A backend whose tensor specs are read off the model by ``load``."""

    _in: TensorSpec | None = None
    _out: TensorSpec | None = None

    @property
    def input_spec(self) -> TensorSpec:
        assert self._in is not None, "load() first"
        return self._in

    @property
    def output_spec(self) -> TensorSpec:
        assert self._out is not None, "load() first"
        return self._out
