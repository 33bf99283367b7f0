"""The benchmark contract: everything the generic harness (steps, SUT, QSL, runner, report) needs
to know about one benchmark, and nothing outside ``benchmarks/`` knows it.

A benchmark owns:

- its tensors: ``inputs(variant)`` (what a preprocessed sample holds and the model takes, per
  sample, ``None`` where a dimension varies) and ``outputs`` (what the model returns that the
  responses are made of); the null backend answers ``outputs`` at once;
- its model's parts: ``model_files`` (one graph, or several that ``infer`` calls: rnnt's encoder,
  prediction and joint networks);
- its data: ``prepare_dataset``, ``prepare_model`` and ``preprocess`` (which writes a sample
  store: fixed-shape or ragged named tensors, see ``samples.py``);
- its batching: ``cost_tensor`` (a sample that is many rows, as dlrm's, is batched by rows),
  ``lengths`` (a query's samples batched in order of length: rnnt's frames, bert's real tokens),
  ``collate`` (samples -> the model's batch; the default stacks fixed-shape tensors, gathered
  straight into preallocated buffers) and ``infer`` (the model calls for one batch; the default
  is one call, a decoder or a sliding window calls more);
- its responses: ``responses`` turns a batch's outputs into each sample's bytes for LoadGen
  (one array per sample, sizes may differ, or one (n, ...) array when they do not);
- its accuracy: ``accuracy`` scores an accuracy log as the official script does, with every
  metric the script prints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends.base import Backend, Tensors, TensorSpec
from ..errors import HarnessError
from ..samples import SampleStore
from ..spec import ModelSize, Source

MODEL = "model"  # the part name of a single-graph model
Responses = np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class AccuracyReport:
    metric: str  # the metric the round's target applies to (a key of ``metrics``)
    metrics: dict[str, float]  # every figure the official script prints, in its units
    line: str  # exactly what the official accuracy script prints
    counts: dict[str, int] = field(default_factory=dict)  # e.g. good / total

    @property
    def value(self) -> float:
        return self.metrics[self.metric]


class Batch:
    """What ``responses`` needs to know of the batch it answers: the samples' QSL indices, and
    for benchmarks batched by rows each sample's row count (their outputs are concatenated).
    A plain class: one is made per batch, on the SUT's hot path."""

    __slots__ = ("costs", "indices")

    def __init__(self, indices: np.ndarray, costs: np.ndarray | None = None) -> None:
        self.indices = indices
        self.costs = costs

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def rows(self) -> int:
        return len(self.indices) if self.costs is None else int(self.costs.sum())


class Benchmark(ABC):
    name: str = ""
    # What is implemented; anything False raises ``not_implemented`` with a clear message.
    capabilities: dict[str, bool] = {}
    # The tensor whose leading dimension counts a sample's rows when one sample is many model rows.
    cost_tensor: str | None = None
    # The tensor whose leading dimension is a sample's length (``lengths``: rnnt's frames).
    sort_tensor: str | None = None
    # False where ``infer`` is more than one call on the sample tensors (no device-resident samples).
    device_resident: bool = True
    # True where ``infer`` runs a graph of fixed batch (``Backend.fixed_batch``) in calls of that batch;
    # else such a graph below the run's batch size is refused.
    splits_batches: bool = False

    def not_implemented(self, what: str) -> HarnessError:
        return HarnessError(f"{self.name}: {what} not implemented yet")

    # --- tensors and model ----------------------------------------------------------------------
    def inputs(self, variant: str) -> tuple[TensorSpec, ...]:
        """The tensors of one preprocessed sample for an input variant (``float32``, or ``int8``
        for engines that take quantised inputs)."""
        raise self.not_implemented("sample layout")

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model outputs the responses are made of (per sample)."""
        raise self.not_implemented("model outputs")

    def model_file(self, model_dir: Path) -> Path:
        raise self.not_implemented("model")

    def model_files(self, model_dir: Path) -> dict[str, Path]:
        """The model's parts by name; a single graph is the part ``model``."""
        return {MODEL: self.model_file(model_dir)}

    # --- data -----------------------------------------------------------------------------------
    @abstractmethod
    def prepare_dataset(
        self, source: Source, out_dir: Path, *, size: ModelSize = "small", quiet: bool = False
    ) -> dict[str, object]:
        """download-data: fetch or generate the dataset into ``out_dir``; return marker facts. ``size``:
        the run's model size (``artifacts.model_size``); a synthetic dataset is labelled by the
        synthetic model of that size and its samples made for that model's inputs."""

    @abstractmethod
    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        """download-model: fetch or generate the model into ``out_dir`` (a synthetic one of
        ``source.synthetic.size``); return its path."""

    @abstractmethod
    def preprocess(
        self, dataset_dir: Path, out_dir: Path, variant: str, *, size: ModelSize = "small", quiet: bool = False
    ) -> list[Path]:
        """preprocess: write the sample store (``samples.write_samples``) and whatever accuracy
        scoring reads later into ``out_dir``; return every file written. ``size``: the run's model
        size, for samples whose shape is the model's (ssd-resnet34's image side)."""

    def size_note(self, size: ModelSize) -> str:
        """What the synthetic model of ``size`` is, for download-model's status (where it is not
        simply that size of the real architecture, as dlrm's float16 tables)."""
        return size

    # --- batching, inference, responses ------------------------------------------------------------
    def lengths(self, store: SampleStore) -> np.ndarray | None:
        """Each sample's length, which orders an Offline query's samples before they are cut into
        batches, shortest first: a batch cut to its longest sample then carries little padding.
        None: no order (the default without ``sort_tensor``)."""
        return store.leading(self.sort_tensor) if self.sort_tensor else None

    def collate(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Samples (ragged tensors included) -> the model's batch. Fixed-shape benchmarks never
        get here: the SUT gathers their tensors straight into buffers. The SUT's samples are a
        ``SampleList``, whose ``rows`` and ``buffer`` build a batch in a few numpy calls."""
        names = samples[0].keys()
        return {name: np.stack([s[name] for s in samples]) for name in names}

    def infer(self, parts: Mapping[str, Backend], feeds: Tensors) -> dict[str, np.ndarray]:
        return parts[MODEL].predict(feeds)

    @abstractmethod
    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> Responses:
        """A batch's outputs -> what LoadGen logs for each sample, in batch order."""

    def example(self, variant: str, n: int) -> dict[str, np.ndarray]:
        """A batch of ``n`` zero samples (varying dimensions 1), for warming a backend up. The
        runner warms a single-graph model with it where a benchmark overrides it (its model's
        batch is not a stack of samples, as dlrm's), else with zeros of the graph's inputs."""
        return {s.name: s.zeros(n) for s in self.inputs(variant)}

    def warm_batches(self, variant: str, batch: int) -> list[dict[str, np.ndarray]]:
        """Batches of every shape a run will form beyond the batch buckets (bert: one per sequence
        length), run through ``infer`` at load: a backend that captures a CUDA graph per shape
        captures them then, not during the timed run (where a capture stalls every instance)."""
        return []

    def calibration_batches(self, dataset_dir: Path, store: SampleStore) -> list[np.ndarray]:
        """The preprocessed samples a calibrated precision (fp8) takes its activation ranges from,
        in batches of the model's input: the round's calibration list for real data."""
        raise self.not_implemented("calibration samples")

    # --- accuracy ---------------------------------------------------------------------------------
    @abstractmethod
    def accuracy(self, accuracy_log: Path, preprocessed_dir: Path) -> AccuracyReport:
        """Score an mlperf_log_accuracy.json as the official script does."""

    def response_description(self) -> str:
        """What one LoadGen response holds, for the submission's README."""
        raise self.not_implemented("responses")

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        """The official accuracy script's command line that scores ``accuracy_log``."""
        raise self.not_implemented("accuracy scoring")


class PendingBenchmark(Benchmark):
    """A benchmark of the suite whose pipeline is not written yet: every step says so clearly."""

    def prepare_dataset(
        self, source: Source, out_dir: Path, *, size: ModelSize = "small", quiet: bool = False
    ) -> dict[str, object]:
        raise self.not_implemented("dataset download")

    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        raise self.not_implemented("model download")

    def preprocess(
        self, dataset_dir: Path, out_dir: Path, variant: str, *, size: ModelSize = "small", quiet: bool = False
    ) -> list[Path]:
        raise self.not_implemented("preprocessing")

    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> Responses:
        raise self.not_implemented("postprocessing")

    def accuracy(self, accuracy_log: Path, preprocessed_dir: Path) -> AccuracyReport:
        raise self.not_implemented("accuracy scoring")
