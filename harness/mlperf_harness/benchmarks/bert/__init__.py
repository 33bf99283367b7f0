"""bert: BERT-Large on SQuAD v1.1 dev (seq 384, query 64, stride 128), F1 as accuracy-squad.py scores it.

Building blocks, not wired into a verb yet: features (``squad``), the synthetic model (``model``), the
synthetic dataset (``synthetic``), samples/batches/responses (``pipeline``) and scoring (``accuracy``).
"""

from __future__ import annotations

from ..base import PendingBenchmark
from .accuracy import RESPONSE_DESCRIPTION, accuracy_command, score
from .model import INPUTS, OUTPUTS, build_model
from .pipeline import FAKE_QUANT_NAMES, MODEL_INPUTS, MODEL_OUTPUTS, SAMPLE_SPECS, collate, infer, preprocess, responses
from .synthetic import synthesize_dataset

# The rounds' values (mlperf.conf of v1.0 and of v6.1, the rules' tables).
DATASET_SIZE = 10833  # features of the 10,570 dev questions
PERFORMANCE_SAMPLE_COUNT = 10833
SERVER_LATENCY_MS = 130  # v1.0 datacenter Server
FP32_F1 = 90.874
TARGETS = {"bert-99": 0.99, "bert-99.9": 0.999}
SCENARIOS = {
    "v1.0": {"datacenter": ("Offline", "Server"), "edge": ("SingleStream", "Offline")},  # 99.9: datacenter only
    "v6.1": {"edge": ("SingleStream", "Offline")},  # bert-99 and bert-99.9
}


class Bert(PendingBenchmark):
    name = "bert"
    capabilities = {"dataset": False, "model": False, "preprocess": False, "accuracy": False, "synthetic": False}


__all__ = [
    "DATASET_SIZE",
    "FAKE_QUANT_NAMES",
    "FP32_F1",
    "INPUTS",
    "MODEL_INPUTS",
    "MODEL_OUTPUTS",
    "OUTPUTS",
    "PERFORMANCE_SAMPLE_COUNT",
    "RESPONSE_DESCRIPTION",
    "SAMPLE_SPECS",
    "SCENARIOS",
    "SERVER_LATENCY_MS",
    "TARGETS",
    "Bert",
    "accuracy_command",
    "build_model",
    "collate",
    "infer",
    "preprocess",
    "responses",
    "score",
    "synthesize_dataset",
]
