"""rnnt: LibriSpeech dev-clean, RNN-T (MLPerf v1.0), 100 - WER.

Building blocks, as plain functions, for the harness to wire in:
``convert_dataset`` / ``synthesize_dataset`` (data), ``build_model`` (three ONNX graphs),
``preprocess`` / ``collate`` / ``infer`` / ``responses`` (pipeline) and ``score`` (accuracy);
``checkpoint_graphs`` turns the real checkpoint's state dict (numpy arrays, e.g. from torch.load on
the GPU image) into the same three graphs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .accuracy import score, word_error_rate
    from .data import (
        BLANK,
        LABELS,
        MAX_DURATION,
        Utterance,
        convert_dataset,
        load_manifest,
        preprocess,
        read_wav,
        synthesize_dataset,
    )
    from .decoder import collate, greedy_decode, infer, responses
    from .features import FEATURES, filterbank_features
    from .model import SAMPLE_SPECS, build_model, checkpoint_graphs, onnx_runner, write_graphs

# Where each building block lives: imported on first use, so that importing the benchmark registry
# does not load librosa and onnxruntime.
_LAZY = {
    **dict.fromkeys(("score", "word_error_rate"), "accuracy"),
    **dict.fromkeys(
        ("BLANK", "LABELS", "MAX_DURATION", "Utterance", "convert_dataset", "load_manifest", "preprocess"), "data"
    ),
    **dict.fromkeys(("read_wav", "synthesize_dataset"), "data"),
    **dict.fromkeys(("collate", "greedy_decode", "infer", "responses"), "decoder"),
    **dict.fromkeys(("FEATURES", "filterbank_features"), "features"),
    **dict.fromkeys(("SAMPLE_SPECS", "build_model", "checkpoint_graphs", "onnx_runner", "write_graphs"), "model"),
}
MANIFEST = "dev-clean-wav.json"  # the converted dataset's manifest, beside dev-clean-wav/
PARTS = ("encoder", "prediction", "joint")
FILES = {part: f"rnnt_{part}.onnx" for part in PARTS}  # the model's three graphs
TARGET_WER = 7.452  # the FP32 reference's WER (%) on dev-clean (README: 7.452253714852645)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The v1.0 round's facts for rnnt (mlperf.conf, the compliance directory, the reference README), for the
# suite tables: dev-clean's utterances of at most 15 s, all of them in the performance sample set.
DATASET_SIZE = 2513
PERFORMANCE_SAMPLE_COUNT = 2513
SERVER_TARGET_LATENCY_MS = 1000
AUDITS = ("TEST01", "TEST05")  # no TEST04 for rnnt
TEST01_SAMPLING_TARGET = 4096  # compliance/nvidia/TEST01/rnnt/audit.config
RESPONSE_DTYPE = "int64"  # what accuracy_eval.py and TEST01's verify_accuracy.py read the responses as
TARGET_ACCURACY = 0.99 * (100.0 - TARGET_WER)  # 91.62252: 99 % of the FP32 reference's 100 - WER


def accuracy_command(log_dir: Path, dataset_dir: Path) -> str:
    """The reference's scoring command, from the root of mlcommons/inference (r1.0); it needs the
    reference's own imports (mlperf_loadgen, librosa, soundfile, inflect, unidecode), not torch."""
    return (
        f"python3 speech_recognition/rnnt/accuracy_eval.py --log_dir {log_dir} --dataset_dir {dataset_dir}"
        f" --manifest {dataset_dir / MANIFEST} --output_dtype {RESPONSE_DTYPE}"
    )


from .benchmark import Rnnt  # noqa: E402 - after the constants it imports

__all__ = [
    "AUDITS",
    "BLANK",
    "DATASET_SIZE",
    "FEATURES",
    "FILES",
    "LABELS",
    "MANIFEST",
    "MAX_DURATION",
    "PARTS",
    "PERFORMANCE_SAMPLE_COUNT",
    "RESPONSE_DTYPE",
    "SAMPLE_SPECS",
    "SERVER_TARGET_LATENCY_MS",
    "TARGET_ACCURACY",
    "TARGET_WER",
    "TEST01_SAMPLING_TARGET",
    "Rnnt",
    "Utterance",
    "accuracy_command",
    "build_model",
    "checkpoint_graphs",
    "collate",
    "convert_dataset",
    "filterbank_features",
    "greedy_decode",
    "infer",
    "load_manifest",
    "onnx_runner",
    "preprocess",
    "read_wav",
    "responses",
    "score",
    "synthesize_dataset",
    "word_error_rate",
    "write_graphs",
]
