"""Artifacts (datasets, preprocessed data, models, engines), their cache keys and the work-dir layout.

A key is a digest of exactly what changes the artifact, so two runs that need the same
artifact share it, and a run that changes any input gets a new one. The step that writes an
artifact owns its key (it keys it from the system it runs on and its installed backend) and reports
it in its outcome; the operator's plan, from the manifest alone, only asks for artifacts, and its
cache index records which artifact on the claim answered each ask (operator cacheindex.py).

Layout of a work directory (the local ``./mlperf-work`` or the run's PVC)::

    cache/<kind>/<key>/           one artifact; ``.complete`` (JSON) is written last
    runs/<run>/<scenario>/<mode>/ LoadGen logs of one harness run
    runs/<run>/<scenario>/tuning/ the tuner's probe runs (not results)
    runs/<run>/audits/<test>/<scenario>/
    runs/<run>/results/           one JSON per step outcome
    runs/<run>/submission/        the run's part of the submission tree
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .benchmarks import SIZED_DATASETS, implementation, preprocess_version
from .spec import MLPerfRunSpec, ModelSize, Source

if TYPE_CHECKING:
    from .config import HarnessConfig

ArtifactKind = Literal["dataset", "preprocessed", "model", "engine", "tuning"]

# 2: full-size BERT keeps its tokens apart through 24 layers (bert/model.py, residual branch gain).
# 3: bert's synthetic answers from logits whose padded tokens are -10000, as the harness now logs them
# (bert/pipeline.py mask_padding): a version-2 set scored 80 % on its own model (30 questions, seed 7).
SYNTHETIC_GENERATOR_VERSION = 3

# Defaults when the spec does not override them; the harness config refines per scenario.
DEFAULT_PRECISION: dict[str, str] = {
    "onnxruntime": "fp32",
    "pytorch": "fp16",
    "tensorrt": "int8",
    "null": "fp32",
}
# Precisions whose engines carry activation ranges calibrated on the benchmark's calibration samples,
# with the version of that procedure: the engine's key then names the data the ranges came from.
# fp8 2: the 3-channel stem's range too (MLPERF_TORCH_FP8_STEM=fp8), which version 1 engines lack.
CALIBRATED: dict[str, int] = {"fp8": 2}
DEFAULT_BATCH_SIZE: dict[str, int] = {"Offline": 64, "Server": 16, "SingleStream": 1, "MultiStream": 8}
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class Artifact:
    kind: ArtifactKind
    key: str
    inputs: dict[str, Any] = field(compare=False, hash=False)

    @property
    def relpath(self) -> str:
        return f"cache/{self.kind}/{self.key}"


def _digest(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _make(kind: ArtifactKind, label: str, inputs: dict[str, Any]) -> Artifact:
    return Artifact(kind=kind, key=f"{label}-{_digest({'kind': kind, **inputs})}", inputs=inputs)


def source_identity(source: Source, role: str, benchmark: str) -> dict[str, Any]:
    """What identifies a source's content: a checksum where there is one, else its location."""
    if source.https is not None:
        return {"sha256": source.https.sha256}
    if source.s3 is not None:
        return {"s3": source.s3.uri, "sha256": source.s3.sha256}
    if source.pvc is not None:
        return {"pvc": source.pvc.claimName, "path": source.pvc.path}
    assert source.synthetic is not None
    ident: dict[str, Any] = {
        "synthetic": SYNTHETIC_GENERATOR_VERSION,
        "benchmark": benchmark,
        "seed": source.synthetic.seed,
    }
    version = preprocess_version(benchmark)
    if version > 1:  # the benchmark's own generator changed (1: the keys made before)
        ident["version"] = version
    if role == "dataset":
        ident["samples"] = source.synthetic.samples
        if source.synthetic.size != "small" and benchmark in SIZED_DATASETS:  # the default keeps earlier keys
            ident["size"] = source.synthetic.size
    else:
        ident["size"] = source.synthetic.size
    return ident


def model_size(spec: MLPerfRunSpec) -> ModelSize:
    """The size of the model the run's data is made for: the synthetic model's, or full for a real model.
    The one owner of that fact: a synthetic dataset is labelled by (and its samples shaped for) the model
    of this size, and preprocessing follows it (ssd-resnet34's input side), so both keys carry it."""
    return spec.model.synthetic.size if spec.model.synthetic is not None else "full"


def implementation_of(spec: MLPerfRunSpec) -> str:
    """What the run's benchmark is in its round (``3d-unet-brats19`` in v1.0, ``3d-unet`` now): the
    label and identity of its artifacts, so one round's dataset or model never answers another's."""
    return implementation(spec.benchmark, spec.suite)


def precision_of(spec: MLPerfRunSpec) -> str:
    return spec.precision or DEFAULT_PRECISION[spec.backend]


def batch_size_of(spec: MLPerfRunSpec, scenario: str) -> int:
    """The spec's batch size, else the harness config's for this system (per scenario, as
    NVIDIA's gpu_batch_size), else the scenario's default."""
    if spec.batchSize:
        return spec.batchSize
    return int(_harness_table(spec, scenario).get("batchSize", DEFAULT_BATCH_SIZE[scenario]))


def _harness_table(spec: MLPerfRunSpec, scenario: str) -> dict[str, Any]:
    from .config import system_id, table_values  # config builds on this module

    return table_values(implementation_of(spec), scenario, system_id(spec), spec.configVer)


def torch_compile_of(spec: MLPerfRunSpec, scenario: str) -> str:
    """The harness config's torch.compile mode for this system (pytorch only; else off)."""
    return str(_harness_table(spec, scenario).get("torchCompile", "off")) if spec.backend == "pytorch" else "off"


def input_dtype_of(spec: MLPerfRunSpec) -> str:
    return "int8" if precision_of(spec) == "int8" else "fp32"


def dataset(spec: MLPerfRunSpec) -> Artifact:
    impl = implementation_of(spec)
    ident = source_identity(spec.dataset, "dataset", impl)
    if spec.dataset.synthetic is not None:  # its answers are the model's
        ident["modelSize"] = model_size(spec)
    return _make("dataset", impl, {"benchmark": impl, **ident})


def model(spec: MLPerfRunSpec) -> Artifact:
    impl = implementation_of(spec)
    return _make("model", impl, {"benchmark": impl, **source_identity(spec.model, "model", impl)})


def preprocessed(spec: MLPerfRunSpec) -> Artifact:
    impl = implementation_of(spec)
    inputs = {
        "dataset": dataset(spec).key,
        "preprocess": preprocess_version(impl),
        "dtype": input_dtype_of(spec),
        "modelSize": model_size(spec),
    }
    return _make("preprocessed", impl, inputs)


def engine(spec: MLPerfRunSpec, scenario: str, backend_version: str) -> Artifact:
    """An engine is specific to model, precision, batch size, GPU product, backend and its version,
    and for a calibrated precision to the preprocessed data its calibration samples came from."""
    precision, batch = precision_of(spec), batch_size_of(spec, scenario)
    inputs = {
        "model": model(spec).key,
        "precision": precision,
        "batch": batch,
        "gpu": spec.system.gpuProduct if spec.uses_gpu else "cpu",
        "backend": spec.backend,
        "backendVersion": backend_version,
    }
    if precision in CALIBRATED:
        inputs["calibration"] = {"preprocessed": preprocessed(spec).key, "version": CALIBRATED[precision]}
    compile_mode = torch_compile_of(spec, scenario)
    if compile_mode != "off":  # a compiled engine carries the compile's artifacts
        inputs["torchCompile"] = compile_mode
    return _make("engine", f"{implementation_of(spec)}-{spec.backend}-{precision}-b{batch}", inputs)


def tuning(spec: MLPerfRunSpec, cfg: HarnessConfig, backend_version: str) -> Artifact:
    """A tuned LoadGen target holds for what changes performance: the engine (model, precision, batch,
    GPU product, backend and version), the data, the system, the instances and batching, and the
    round's latency bound and percentile that a Server target must meet."""
    lg = cfg.loadgen
    inputs = {
        "engine": engine(spec, cfg.scenario, backend_version).key,
        "preprocessed": preprocessed(spec).key,
        "scenario": cfg.scenario,
        "system": cfg.systemId,
        "instances": cfg.workers,
        "devices": cfg.devices,
        "startFromDevice": cfg.startFromDevice,
        "batchTimeoutUs": cfg.batchTimeoutUs,
        "latencyNs": lg.serverLatencyNs or cfg.latencyBoundNs,
        "percentile": lg.latencyPercentile,
        "samplesPerQuery": lg.multiStreamSamplesPerQuery,
    }
    return _make("tuning", f"{spec.benchmark}-{cfg.scenario.lower()}-b{cfg.batchSize}", inputs)


@dataclass(frozen=True)
class Workdir:
    """Paths inside a work directory; the same layout locally and on the PVC."""

    root: Path

    def artifact(self, artifact: Artifact) -> Path:
        return self.root / artifact.relpath

    def run(self, run: str) -> Path:
        return self.root / "runs" / run

    def harness_run(self, run: str, scenario: str, mode: str) -> Path:
        return self.run(run) / scenario / mode

    def tuning(self, run: str, scenario: str) -> Path:
        return self.run(run) / scenario / "tuning"

    def audit(self, run: str, test: str, scenario: str) -> Path:
        return self.run(run) / "audits" / test / scenario

    def results(self, run: str) -> Path:
        return self.run(run) / "results"

    def submission(self, run: str) -> Path:
        return self.run(run) / "submission"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()
