"""The one interface every inference backend implements: named tensors in, named tensors out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..config import HarnessConfig

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a sample (or of a model's batch row): its per-sample shape, without the
    batch dimension; ``None`` where a dimension varies from sample to sample."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name
    # int8 tensors: the real value of one quantisation step (symmetric), for engines that take them as is.
    scale: float | None = None

    @property
    def ragged(self) -> bool:
        return any(d is None for d in self.shape)

    def concrete(self, fill: int = 1) -> tuple[int, ...]:
        """The shape with every varying dimension set to ``fill``."""
        return tuple(fill if d is None else d for d in self.shape)

    def zeros(self, n: int) -> np.ndarray:
        return np.zeros((n, *self.concrete()), dtype=self.dtype)


class Backend(ABC):
    """Load a model (or a built engine) once, then run batches.

    ``predict`` takes a batch of named input tensors (first dimension the batch) and returns the
    named outputs the caller asked for at ``load`` (all, when it named none), first dimension the
    batch. It is called from one worker thread at a time per backend instance.
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
    # The batch the loaded graph takes where its input fixes one (the official ssd-resnet34 graph's 1);
    # None where any batch goes. Set by ``load``.
    fixed_batch: int | None = None

    def configure(self, cfg: HarnessConfig) -> None:  # noqa: B027 - optional hook
        """Take backend-specific settings from the harness config; called before ``load``."""

    @abstractmethod
    def load(self, model_path: Path, batch_size: int, precision: str, *, outputs: Sequence[str] = ()) -> None: ...

    @abstractmethod
    def predict(self, feeds: Tensors) -> dict[str, np.ndarray]: ...

    @property
    @abstractmethod
    def input_specs(self) -> tuple[TensorSpec, ...]: ...

    @property
    @abstractmethod
    def output_specs(self) -> tuple[TensorSpec, ...]: ...

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

    def build_engine(
        self, model_path: Path, out_dir: Path, batch_size: int, precision: str, inputs: Sequence[TensorSpec] = ()
    ) -> Path:
        """Turn the model into what ``load`` runs fastest; the default runs the model as is.
        ``inputs``: the benchmark's input tensors as the samples hold them (dtype, int8 scale)."""
        return model_path

    def warmup(self, feeds: Tensors, rounds: int = 2) -> None:
        for _ in range(rounds):
            self.predict(feeds)

    def graphs_per_shape(self) -> bool:
        """Whether it captures a graph at each input shape's first call (the runner then runs the
        benchmark's ``warm_batches`` at load)."""
        return False

    def reserve_samples(self, capacity: int) -> bool:
        """Keep up to ``capacity`` loaded samples in device memory; False where the backend cannot
        (the SUT then gathers samples on the host and calls ``predict``). Called after ``load``."""
        return False

    def stage_samples(self, samples: Tensors) -> None:
        """Copy a newly loaded sample set (named tensors, rows in load order) to the device."""
        raise NotImplementedError(f"{self.name}: no device-resident samples")

    def predict_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``predict`` for the staged samples at ``rows``."""
        raise NotImplementedError(f"{self.name}: no device-resident samples")

    def tensor_device(self) -> tuple[Any, Any] | None:
        """(torch device, float dtype) where ``predict_tensors`` runs, once loaded; None where the
        backend has no such entry."""
        return None

    def predict_tensors(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """``predict`` on torch tensors already on ``tensor_device``, the outputs left there in its
        dtype: for a caller that keeps a loop's state on the device (rnnt's decoder)."""
        raise NotImplementedError(f"{self.name}: no device tensors")

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def describe(self) -> str:
        return f"{self.name} {self.version()}"


class ModelBackend(Backend):
    """A backend whose tensor specs are read off the model by ``load``."""

    _ins: tuple[TensorSpec, ...] = ()
    _outs: tuple[TensorSpec, ...] = ()

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        assert self._ins, "load() first"
        return self._ins

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        assert self._outs, "load() first"
        return self._outs


def pick_outputs(available: Sequence[str], wanted: Sequence[str], model: str) -> list[str]:
    """The outputs a caller asked for, in its order (all when it named none); an unknown name is
    an error that lists what the model has."""
    from ..errors import HarnessError

    for name in wanted:
        if name not in available:
            raise HarnessError(f"{model}: has no output {name!r} (outputs: {', '.join(available)})")
    return list(wanted) or list(available)
