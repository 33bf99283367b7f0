"""dlrm: DLRM (tb00_40M) on Criteo Terabyte day 23, scored by AUC (MLPerf v1.0 only).

``Dlrm`` (``benchmark``) puts it on the benchmark contract, from these parts:
- ``criteo``: the reference's binary test file, memory-mapped, grouped into LoadGen samples;
- ``model``: the synthetic DLRM as ONNX (small for CI, full-size with external data);
- ``synthetic``: a synthetic test file labelled by the FP32 model's own clicks;
- ``batching``: collate (a batch counted in rows), infer, responses (the reference's bytes);
- ``accuracy``: AUC as tools/accuracy-dlrm.py computes and prints it.
"""

from __future__ import annotations

from .benchmark import Dlrm

# v1.0 facts for the round tables.
TARGET_AUC = 80.25  # FP32 reference AUC (percent); targets 99 % and 99.9 % of it
ACCURACY_LEVELS = (0.99, 0.999)
DATASET_SIZE = 330_067  # LoadGen samples of the quantile trace over the 89,137,319 test rows
PERFORMANCE_SAMPLE_COUNT = 204_800  # mlperf.conf dlrm.*.performance_sample_count_override
SERVER_LATENCY_MS = 30  # mlperf.conf dlrm.Server.target_latency
TEST01_SAMPLES = 4096  # compliance TEST01 audit.config accuracy_log_sampling_target
AUDITS = ("TEST01", "TEST05")  # TEST04 exempt for dlrm in v1.0
SCENARIOS = {"datacenter": ("Offline", "Server"), "edge": ()}


__all__ = [
    "ACCURACY_LEVELS",
    "AUDITS",
    "DATASET_SIZE",
    "PERFORMANCE_SAMPLE_COUNT",
    "SCENARIOS",
    "SERVER_LATENCY_MS",
    "TARGET_AUC",
    "TEST01_SAMPLES",
    "Dlrm",
]
