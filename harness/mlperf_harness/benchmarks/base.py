"""What every benchmark provides: data, model, preprocessing, postprocessing and accuracy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from ..spec import Source


@dataclass(frozen=True)
class AccuracyReport:
    value: float  # in the metric's unit (percent for top-1)
    line: str  # exactly what the official accuracy script prints
    metric: str
    good: int = 0
    total: int = 0


class Benchmark(ABC):
    name: str = ""
    # Names of the model's input and of the output the harness responds with.
    input_name: str = ""
    output_name: str = ""
    # What is implemented; anything False raises ``not_implemented`` with a clear message.
    capabilities: dict[str, bool] = {}

    def not_implemented(self, what: str) -> HarnessError:
        return HarnessError(f"{self.name}: {what} not implemented yet (only resnet50 runs end to end)")

    @abstractmethod
    def prepare_dataset(self, source: Source, out_dir: Path, *, quiet: bool = False) -> dict[str, object]:
        """download-data: fetch or generate the dataset into ``out_dir``; return marker facts."""

    @abstractmethod
    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        """download-model: fetch or generate the model into ``out_dir``; return its path."""

    @abstractmethod
    def preprocess(self, dataset_dir: Path, out_dir: Path, dtype: str, *, quiet: bool = False) -> dict[str, object]:
        """preprocess: write ``<dtype>.npy`` (N, ...) in QSL order into ``out_dir``."""

    @abstractmethod
    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Backend output for N samples -> the N response rows LoadGen logs (contiguous)."""

    @abstractmethod
    def accuracy(self, accuracy_log: Path, dataset_dir: Path) -> AccuracyReport:
        """Score an mlperf_log_accuracy.json as the official script does."""

    def response_description(self) -> str:
        """What one LoadGen response holds, for the submission's README."""
        raise self.not_implemented("responses")

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        """The official accuracy script's command line that scores ``accuracy_log``."""
        raise self.not_implemented("accuracy scoring")

    def sample_shape(self) -> tuple[int, ...]:
        raise self.not_implemented("sample layout")

    def model_file(self, model_dir: Path) -> Path:
        raise self.not_implemented("model")


class PendingBenchmark(Benchmark):
    """A benchmark of the suite whose pipeline is not written yet: every step says so clearly."""

    def prepare_dataset(self, source: Source, out_dir: Path, *, quiet: bool = False) -> dict[str, object]:
        raise self.not_implemented("dataset download")

    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        raise self.not_implemented("model download")

    def preprocess(self, dataset_dir: Path, out_dir: Path, dtype: str, *, quiet: bool = False) -> dict[str, object]:
        raise self.not_implemented("preprocessing")

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        raise self.not_implemented("postprocessing")

    def accuracy(self, accuracy_log: Path, dataset_dir: Path) -> AccuracyReport:
        raise self.not_implemented("accuracy scoring")
