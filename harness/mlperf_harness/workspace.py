"""Where each verb finds its inputs and puts its outputs, from the spec and the lead's layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from . import artifacts
from .backends import engine_version
from .benchmarks import get_benchmark
from .benchmarks.base import Benchmark
from .config import build_config
from .errors import HarnessError
from .fsutil import read_marker, verify_marker_files
from .samples import SampleStore
from .spec import MLPerfRunSpec


@dataclass
class Workspace:
    spec: MLPerfRunSpec
    root: Path
    run: str = "local"
    quiet: bool = False
    # Test hook: wraps the backend of performance-mode runs (e.g. faulty.CorruptOutputs for TEST01).
    perf_backend_wrapper: object | None = field(default=None, repr=False)

    @cached_property
    def workdir(self) -> artifacts.Workdir:
        return artifacts.Workdir(self.root)

    @cached_property
    def bench(self) -> Benchmark:
        return get_benchmark(self.spec.benchmark, self.spec.suite)  # the round picks what it is

    # The artifacts this step works with, keyed from the spec as it runs here (localized) and the installed
    # backend: the producing step reports the one it wrote, which is what the operator's cache index records.
    @property
    def dataset(self) -> artifacts.Artifact:
        return artifacts.dataset(self.spec)

    @property
    def model(self) -> artifacts.Artifact:
        return artifacts.model(self.spec)

    @property
    def preprocessed(self) -> artifacts.Artifact:
        return artifacts.preprocessed(self.spec)

    def engine(self, scenario: str) -> artifacts.Artifact:
        return artifacts.engine(self.spec, scenario, engine_version(self.spec.backend))

    def tuning(self, scenario: str) -> artifacts.Artifact:
        """Where the tuner's finding for this scenario is cached (its untuned config's key)."""
        return artifacts.tuning(self.spec, build_config(self.spec, scenario), engine_version(self.spec.backend))  # type: ignore[arg-type]

    @property
    def dataset_dir(self) -> Path:
        return self.workdir.artifact(self.dataset)

    @property
    def model_dir(self) -> Path:
        return self.workdir.artifact(self.model)

    @property
    def preprocessed_dir(self) -> Path:
        return self.workdir.artifact(self.preprocessed)

    def engine_dir(self, scenario: str) -> Path:
        return self.workdir.artifact(self.engine(scenario))

    @property
    def run_dir(self) -> Path:
        return self.workdir.run(self.run)

    @property
    def results_dir(self) -> Path:
        return self.workdir.results(self.run)

    def harness_dir(self, scenario: str, mode: str) -> Path:
        return self.workdir.harness_run(self.run, scenario, mode)

    def tuning_dir(self, scenario: str) -> Path:
        return self.workdir.tuning(self.run, scenario)

    def audit_dir(self, test: str, scenario: str) -> Path:
        return self.workdir.audit(self.run, test, scenario)

    def samples(self) -> SampleStore:
        """The preprocessed sample store, checked against the benchmark's input tensors."""
        return SampleStore(self.preprocessed_dir, self.bench.inputs(artifacts.input_dtype_of(self.spec)))

    def require(self, directory: Path, what: str, verb: str) -> None:
        if read_marker(directory) is None:
            raise HarnessError(f"{directory}: {what} not ready; run 'mlperf {verb}' first")
        verify_marker_files(directory)

    def model_paths(self, scenario: str) -> dict[str, Path]:
        """Each part of the model: its built engine where build-engine made one, else the
        downloaded part."""
        engine = self.engine_dir(scenario)
        built = (read_marker(engine) or {}).get("engines") or {}
        if len(built) < len(self.bench.model_files(self.model_dir)):
            self.require(self.model_dir, "model", "download-model")
        return {
            part: engine / built[part] if part in built else path
            for part, path in self.bench.model_files(self.model_dir).items()
        }

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)
