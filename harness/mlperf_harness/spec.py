"""The MLPerfRun spec: one pydantic model for the CRD, the operator and the local runner.

Field names are the CRD's camelCase. Every field has a description: they become
``kubectl explain`` text through the generated CRD. Kubernetes admission rules that the
schema alone cannot express (CEL) are attached here too, next to the field they guard, so that
the YAML in ``crds/`` is derived from this file and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .suites import BENCHMARKS, BenchmarkName, ConfigVer, Scenario, load_suite

SuiteName = Literal["v1.0", "v6.1"]
TestMode = Literal["PerformanceOnly", "AccuracyOnly"]
AuditTest = Literal["TEST01", "TEST04", "TEST04-A", "TEST04-B", "TEST05"]
BackendName = Literal["onnxruntime", "pytorch", "tensorrt", "null"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
ModelSize = Literal["small", "full"]

CEL = "x-kubernetes-validations"
# A label value as the API server checks it, checked at admission instead: a run whose Jobs cannot be made fails.
LabelValue = Annotated[str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")]


# What may change while a run is in flight: neither shapes a measurement. Every other field is fixed at creation.
MUTABLE_FIELDS = ("retries", "ttlSecondsAfterFinished")


TENSORRT_NEEDS_GPU = (
    "spec.system.gpuCount: backend tensorrt runs only on a GPU (gpuCount >= 1); "
    "for the CPU use backend onnxruntime or pytorch"
)
SEEDS_DIFFER = (
    "spec.model.synthetic.seed must equal spec.dataset.synthetic.seed for an accuracy run: the synthetic labels "
    "are the synthetic model's predictions for the dataset of that seed, so another model seed scores chance"
)


def _seed_cel(source: str) -> str:
    """The synthetic seed in CEL: 0 when the source is left out (the synthetic default), -1 when not synthetic."""
    return f"(!has(self.{source}) ? 0 : has(self.{source}.synthetic) ? self.{source}.synthetic.seed : -1)"


SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "self.backend != 'tensorrt' || !has(self.system) || self.system.gpuCount > 0",
        "message": TENSORRT_NEEDS_GPU,
        "fieldPath": ".system.gpuCount",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": f"!self.testModes.exists(m, m == 'AccuracyOnly') || {_seed_cel('dataset')} == -1 || "
        f"{_seed_cel('model')} == -1 || {_seed_cel('dataset')} == {_seed_cel('model')}",
        "message": SEEDS_DIFFER,
        "fieldPath": ".model.synthetic.seed",
        "reason": "FieldValueInvalid",
    },
]


def _spec_rules(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Rules across fields, and transition rules on the spec, one per field: on the field itself a rule would
    not run when the field is added or removed (a nodeSelector set after creation, say)."""
    fields = [f for f in model.model_fields if f not in MUTABLE_FIELDS]
    schema[CEL] = (
        schema.get(CEL, [])
        + SPEC_RULES
        + [
            {
                "rule": f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
                "message": f"spec.{f} is immutable once the run exists (it shapes the run's Jobs, and a change would "
                "mix two settings in one result); create a new MLPerfRun instead",
                "fieldPath": f".{f}",
                "reason": "FieldValueForbidden",
            }
            for f in fields
        ]
    )


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- sources --------------------------------------------------------------------------------


class SecretRef(SpecModel):
    name: str = Field(description="Name of a Secret in the run's namespace.")


class HttpsSource(SpecModel):
    url: str = Field(
        pattern=r"^https?://",
        description="Address of the file (https; http only for local mirrors).",
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="Expected SHA-256 of the file, lower-case hex; the download is rejected on mismatch.",
    )


class S3Source(SpecModel):
    uri: str = Field(pattern=r"^s3://[^/]+/.+", description="Object or prefix, as s3://bucket/key.")
    secretRef: SecretRef | None = Field(
        default=None,
        description=(
            "Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; passed to the Jobs by "
            "reference, never read by the operator."
        ),
    )
    endpoint: str | None = Field(default=None, description="S3-compatible endpoint URL (MinIO, Ceph).")
    region: str | None = Field(default=None, description="Bucket region.")
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected SHA-256 when the URI names a single object.",
    )


class PvcSource(SpecModel):
    claimName: str = Field(description="An existing PersistentVolumeClaim holding the files.")
    path: str = Field(default="", description="Directory or file inside the claim.")


class SyntheticSource(SpecModel):
    samples: int = Field(
        default=256,
        ge=1,
        le=50000,
        description=(
            "Number of generated samples (dataset) or ignored (model). Synthetic data and generated "
            "models are deterministic, and every result made from them is marked synthetic."
        ),
    )
    seed: int = Field(default=0, ge=0, description="Seed of the generator.")
    size: ModelSize = Field(
        default="small",
        description=(
            "A model's size (a dataset's answers and samples' shapes follow the run's model; a real model "
            "counts as full). small: the benchmark's graph with narrow layers and small inputs, minutes on a "
            "CPU (CI). full: the real architecture's sizes, for a GPU (ssd-resnet34 1200x1200, BERT-Large, the "
            "full RNN-T, 3d-unet's 128^3 patches). resnet50: both are the real ResNet-50 (no smaller variant). "
            "dlrm full: the real MLPs and 26 tables of the real row counts (187,767,399 rows of dimension 128) "
            "in float16: 44.8 GiB instead of the reference's 89.5 GiB of float32 (the model's status says so). "
            "A dataset's size is ignored but by 3d-unet's KiTS19: small, cases of one or one and a half patches "
            "a side (CI); full, the preprocessed shapes of KiTS19's 43 inference cases (64 windows a case on "
            "average; samples at most 43, labelled on a GPU where the step sees one), so that cases/s compares "
            "with published 3d-unet figures."
        ),
    )


_ONE_SOURCE: dict[str, Any] = {
    CEL: [
        {
            "rule": "[has(self.https), has(self.s3), has(self.pvc), has(self.synthetic)].filter(x, x).size() == 1",
            "message": "set exactly one of https, s3, pvc or synthetic",
        }
    ]
}


class Source(SpecModel):
    """Where a dataset or a model comes from: exactly one of the four."""

    model_config = ConfigDict(json_schema_extra=cast(Any, _ONE_SOURCE))

    https: HttpsSource | None = Field(default=None, description="Download over HTTPS, checksum checked.")
    s3: S3Source | None = Field(default=None, description="Download from S3 with credentials by Secret.")
    pvc: PvcSource | None = Field(default=None, description="Use files already on a PVC.")
    synthetic: SyntheticSource | None = Field(
        default=None, description="Generate deterministic synthetic data or a random-weight model."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        chosen = [k for k in ("https", "s3", "pvc", "synthetic") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("set exactly one of https, s3, pvc or synthetic")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("https", "s3", "pvc", "synthetic") if getattr(self, k) is not None)

    @property
    def is_synthetic(self) -> bool:
        return self.synthetic is not None


def synthetic_source() -> Source:
    return Source(synthetic=SyntheticSource())


# --- storage, system, images ---------------------------------------------------------------


class CreatedClaim(SpecModel):
    storageClassName: str | None = Field(
        default=None, description="StorageClass of the claim; the cluster default when unset."
    )
    size: str = Field(
        default="200Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
        description="Requested capacity, a Kubernetes quantity such as 500Gi.",
    )
    accessMode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        default="ReadWriteOnce",
        description="Access mode; ReadWriteMany lets steps on different nodes share the cache.",
    )
    reclaim: Literal["Retain", "Delete"] = Field(
        default="Delete",
        description="Delete removes the claim with the run; Retain keeps it (and its cache) for later runs.",
    )


class Storage(SpecModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": "has(self.existingClaim) != has(self.create)",
                    "message": "set exactly one of storage.existingClaim or storage.create",
                },
            ]
        }
    )

    existingClaim: str | None = Field(
        default=None,
        description="Name of an existing PVC for data, models, engines and logs (shared cache across runs).",
    )
    create: CreatedClaim | None = Field(default=None, description="Have the operator create a PVC.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Storage:
        if (self.existingClaim is None) == (self.create is None):
            raise ValueError("set exactly one of storage.existingClaim or storage.create")
        return self


class System(SpecModel):
    gpuProduct: str = Field(
        default="NVIDIA-H200",
        description=(
            "GPU product, as the node label nvidia.com/gpu.product (GPU feature discovery). Engine "
            "builds and harness runs land on nodes of this product."
        ),
    )
    gpuCount: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per harness run (0 runs on CPU nodes only).",
    )
    exclusiveNode: bool = Field(
        default=False,
        description=(
            "Take a whole node for the harness runs and audits: their pods request all gpusPerNode GPUs, so no "
            "other GPU pod shares the node while they measure (the scheduler and Kueue's quota count them)."
        ),
    )
    gpusPerNode: int = Field(default=8, ge=1, le=16, description="GPUs on one node of this product, for exclusiveNode.")


class Images(SpecModel):
    harness: str = Field(
        default="ghcr.io/mlperf-operator/harness-cpu:0.1.0",
        description="Container image that runs the harness step verbs.",
    )
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy of every step's container."
    )
    pullSecrets: list[str] = Field(
        default_factory=list, description="Names of image pull Secrets in the run's namespace."
    )


class LoadGenOverrides(SpecModel):
    targetQps: float | None = Field(
        default=None, gt=0, description="Server target QPS (server_target_qps); must be > 0."
    )
    expectedQps: float | None = Field(
        default=None, gt=0, description="Offline expected QPS (offline_expected_qps); must be > 0."
    )
    targetLatencyMs: float | None = Field(
        default=None, gt=0, description="Expected SingleStream / MultiStream latency in milliseconds."
    )
    minDurationMs: int | None = Field(default=None, gt=0, description="Minimum run duration (ms).")
    minQueryCount: int | None = Field(default=None, gt=0, description="Minimum number of queries.")
    performanceSampleCount: int | None = Field(
        default=None, gt=0, description="Override of the performance sample count (may only raise it)."
    )
    samplesPerQuery: int | None = Field(default=None, gt=0, description="MultiStream samples per query.")


class Kueue(SpecModel):
    queueName: str | None = Field(
        default=None,
        description=(
            "Kueue LocalQueue of the run's namespace: every Job gets kueue.x-k8s.io/queue-name and waits, "
            "suspended and Queued, until Kueue admits it (default: the operator's, the chart's kueue.localQueue)."
        ),
    )
    priorityClass: str | None = Field(
        default=None,
        description=(
            "Kueue WorkloadPriorityClass (kueue.x-k8s.io/priority-class): higher values are admitted first "
            "(default: the operator's, the chart's kueue.priorityClass)."
        ),
    )


class Submission(SpecModel):
    division: Literal["closed", "open"] = Field(default="closed", description="Submission division.")
    submitter: str = Field(default="mlperf-operator", description="Submitting organisation.")
    systemName: str = Field(
        default="", description="System name in the submission tree; derived from the GPU when empty."
    )
    status: Literal["available", "preview", "rdi"] = Field(
        default="available", description="Availability status of the system."
    )
    systemOverrides: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Values for the system description JSON that cannot be read off the machine; only the "
            "fields of the run's round are written."
        ),
    )


# --- the spec -------------------------------------------------------------------------------


def category_message(suite: str, benchmark: str, category: str) -> str:
    """Why a benchmark cannot run in a category of a round (shared with the CRD's CEL rule)."""
    rule = load_suite(suite).rule(benchmark)
    others = [c for c, scenarios in rule.scenarios.items() if scenarios]
    return (
        f"spec.category: {benchmark} is not a {category} benchmark in suite {suite} "
        f"(it is {' and '.join(others) or 'in no category'}); set category: {others[0] if others else category}"
    )


class MLPerfRunSpec(SpecModel):
    """What to run: one benchmark of one suite, its scenarios and modes, on which system."""

    model_config = ConfigDict(json_schema_extra=cast(Any, _spec_rules))

    benchmark: BenchmarkName = Field(
        description=f"Benchmark: {', '.join(BENCHMARKS[:-1])} or {BENCHMARKS[-1]}.",
    )
    suite: SuiteName = Field(
        default="v1.0",
        description="Rules of the MLPerf round: v1.0, or v6.1 (the current round) where the benchmark exists there.",
    )
    category: Literal["datacenter", "edge"] = Field(
        default="datacenter",
        description="System category; decides which scenarios the suite allows.",
    )
    scenarios: list[Scenario] = Field(
        default=["Offline"],
        min_length=1,
        max_length=4,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="LoadGen scenarios to run: Offline, Server, SingleStream, MultiStream.",
    )
    configVer: ConfigVer = Field(
        default="default",
        description="default (99 % accuracy target) or high_accuracy (99.9 %, where the round has that level).",
    )
    testModes: list[TestMode] = Field(
        default=["PerformanceOnly", "AccuracyOnly"],
        min_length=1,
        max_length=2,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="PerformanceOnly and/or AccuracyOnly.",
    )
    audits: list[AuditTest] | None = Field(
        default=None,
        max_length=5,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=(
            "Compliance tests to run after the performance runs. Unset: what the suite requires for "
            "the benchmark; [] runs none (the result is then not submittable)."
        ),
    )
    fast: bool = Field(
        default=False,
        description=(
            "Debug runs: 60 s minimum duration and min query count 1 for Offline and MultiStream. "
            "Results are marked not submittable."
        ),
    )
    tune: bool = Field(
        default=False,
        description=(
            "Find the LoadGen targets before the run with short probe runs: the highest Server target QPS "
            "that stays VALID (times a safety margin), the Offline expected QPS, the SingleStream / "
            "MultiStream expected latency. The found value replaces loadgen's and the harness config's; it "
            "is cached per benchmark, system and engine, and recorded in the result and in user.conf."
        ),
    )
    backend: BackendName = Field(
        default="onnxruntime",
        description="Inference backend: tensorrt, pytorch, onnxruntime, or null (harness overhead only).",
    )
    precision: Precision | None = Field(
        default=None,
        description="Override of the benchmark config's precision (fp32, fp16, bf16, int8, fp8).",
    )
    batchSize: int | None = Field(
        default=None,
        gt=0,
        le=65536,
        description="Override of the batch size the engine is built for and runs with.",
    )
    instancesPerDevice: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description=(
            "Backend instances per GPU (or on the CPU) in one LoadGen run, each with its own queue; "
            "on a GPU they queue their batches on its one stream, so one's host work overlaps "
            "another's batch. Every GPU of system.gpuCount gets this many. Default: the harness config's."
        ),
    )
    loadgen: LoadGenOverrides = Field(
        default_factory=LoadGenOverrides,
        description="LoadGen settings written to user.conf.",
    )
    dataset: Source = Field(
        default_factory=synthetic_source,
        description="Where the dataset comes from; synthetic when unset.",
    )
    model: Source = Field(
        default_factory=synthetic_source,
        description="Where the model comes from; a generated random-weight model when unset.",
    )
    storage: Storage = Field(
        description="Volume for datasets, models, engines, logs and results (required).",
    )
    system: System = Field(
        default_factory=System,
        description="Which GPUs to run on.",
    )
    images: Images = Field(default_factory=Images, description="Images of the step Jobs.")
    resources: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="ResourceRequirements of each step's container (GPUs are added for GPU steps).",
    )
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="Extra node selector for every step's pod.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        # The core/v1 Toleration's fields, typed: CEL cannot see a list of untyped objects (spec immutability).
        json_schema_extra={
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string", "description": "Taint key the toleration matches (empty: all)."},
                    "operator": {"type": "string", "description": "Exists or Equal (default)."},
                    "value": {"type": "string", "description": "Taint value, for operator Equal."},
                    "effect": {
                        "type": "string",
                        "description": "NoSchedule, PreferNoSchedule or NoExecute (empty: all).",
                    },
                    "tolerationSeconds": {
                        "type": "integer",
                        "description": "How long a NoExecute taint is tolerated before eviction.",
                    },
                },
            }
        },
        description="Extra tolerations for every step's pod (the GPU taint is tolerated already).",
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="Affinity of every step's pod.",
    )
    podAnnotations: dict[str, str] = Field(default_factory=dict, description="Annotations added to every step's pod.")
    podLabels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Labels added to every step's pod; values as Kubernetes allows them (63 characters of "
        "letters, digits, '-', '_', '.', alphanumeric at both ends).",
    )
    serviceAccountName: str | None = Field(
        default=None, description="ServiceAccount the step pods run as (the namespace default when unset)."
    )
    kueue: Kueue = Field(default_factory=Kueue, description="Kueue queue and priority for the Jobs.")
    priorityClassName: str | None = Field(default=None, description="Kubernetes PriorityClass of the step pods.")
    retries: int = Field(
        default=2, ge=0, le=10, description="Times a failed step is retried, with backoff, before the run fails."
    )
    schedulingTimeoutSeconds: int = Field(
        default=900,
        ge=1,
        le=7 * 24 * 3600,
        description=(
            "How long a step's pod may stay unschedulable (no node fits: GPU product, node selector, quota) "
            "before the run fails with the scheduler's reason. Until then the step, a condition and a Warning "
            "Event say why it waits."
        ),
    )
    ttlSecondsAfterFinished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the finished step Jobs after this many seconds (the run keeps its results).",
    )
    submission: Submission = Field(default_factory=Submission, description="Submission metadata for the report step.")

    @model_validator(mode="after")
    def _consistent(self) -> MLPerfRunSpec:
        # SPEC_RULES, for manifests that never see an API server.
        if self.backend == "tensorrt" and self.system.gpuCount == 0:
            raise ValueError(TENSORRT_NEEDS_GPU)
        seeds = [s.synthetic.seed for s in (self.dataset, self.model) if s.synthetic is not None]
        if "AccuracyOnly" in self.testModes and len(seeds) == 2 and seeds[0] != seeds[1]:
            raise ValueError(f"{SEEDS_DIFFER} (dataset {seeds[0]}, model {seeds[1]})")
        return self

    @model_validator(mode="after")
    def _suite_rules(self) -> MLPerfRunSpec:
        # The same rules the CRD enforces with CEL, for manifests that never see an API server.
        try:
            rule = load_suite(self.suite).rule(self.benchmark)
        except KeyError as exc:
            raise ValueError(f"spec.benchmark: {exc.args[0]}") from None
        allowed = rule.scenarios[self.category]
        if not allowed:
            raise ValueError(category_message(self.suite, self.benchmark, self.category))
        bad = [s for s in self.scenarios if s not in allowed]
        if bad:
            raise ValueError(
                f"spec.scenarios: {', '.join(bad)} not allowed for {self.benchmark} ({self.category}) in "
                f"suite {self.suite}; allowed: {', '.join(allowed) or 'none'}"
            )
        if self.configVer == "high_accuracy" and not rule.allows_high_accuracy(self.category):
            raise ValueError(
                f"spec.configVer: {self.benchmark} has no high_accuracy target in suite {self.suite} "
                f"({self.category}); use configVer: default"
            )
        if rule.pending:  # after the table's own rules, which hold for the round whatever is wired
            raise ValueError(f"spec.benchmark: {self.benchmark} in suite {self.suite} cannot run yet: {rule.pending}")
        return self

    # Derived facts, used by the pipeline and the Job builder.
    @property
    def synthetic(self) -> bool:
        return self.dataset.is_synthetic or self.model.is_synthetic

    @property
    def uses_gpu(self) -> bool:
        return self.system.gpuCount > 0 and self.backend != "null"

    @property
    def effective_audits(self) -> list[str]:
        if self.audits is not None:
            return list(self.audits)
        return list(load_suite(self.suite).rule(self.benchmark).audits)


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = "local"
    namespace: str | None = None


class MLPerfRunManifest(BaseModel):
    """A whole MLPerfRun object as written in a manifest file."""

    model_config = ConfigDict(extra="allow")
    apiVersion: str = "mlperf-operator.io/v1alpha1"
    kind: Literal["MLPerfRun"] = "MLPerfRun"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: MLPerfRunSpec


def load_manifest(path_or_text: str | Path) -> MLPerfRunManifest:
    """Read a manifest (or a bare spec) from a file path, YAML text or JSON text."""
    text = str(path_or_text)
    candidate = Path(text)
    if "\n" not in text and not text.lstrip().startswith("{") and candidate.exists():
        text = candidate.read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path_or_text}: expected a mapping (an MLPerfRun manifest or its spec)")
    if "spec" not in data:
        data = {"spec": data}
    return MLPerfRunManifest.model_validate(data)
