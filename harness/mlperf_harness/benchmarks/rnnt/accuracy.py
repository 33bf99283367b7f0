"""WER as the reference's accuracy_eval.py computes and prints it.

Every entry of mlperf_log_accuracy.json (duplicates included) is a hypothesis: the int64 label
indices decoded from its hex, turned into characters; its reference is the manifest transcript of
its qsl_idx, through the same normalisation and label filter. WER = total word-level edit distance
/ total reference words (words split on whitespace).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import HarnessError
from .data import LABELS, load_manifest


def _edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def word_error_rate(hypotheses: list[str], references: list[str]) -> tuple[float, int, int]:
    """(wer as a fraction, edit distance, reference words); inf when there are no reference words."""
    errors = words = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        ref_words = ref.split()
        words += len(ref_words)
        errors += _edit_distance(hyp.split(), ref_words)
    return (errors / words if words else float("inf")), errors, words


def _text(indices: np.ndarray, where: str) -> str:
    if indices.size and (indices.min() < 0 or indices.max() >= len(LABELS)):
        raise HarnessError(
            f"{where}: label index out of range 0..{len(LABELS) - 1}; the log is not RNN-T's int64 labels"
        )
    return "".join(LABELS[int(k)] for k in indices)


def score(accuracy_log_path: Path, dataset_dir: Path) -> tuple[dict[str, float], str]:
    """Score an mlperf_log_accuracy.json against ``dataset_dir``'s dev-clean-wav.json; the line is
    accuracy_eval.py's ``Word Error Rate: ...%, accuracy=...%``."""
    try:
        results = json.loads(accuracy_log_path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{accuracy_log_path}: missing; run the accuracy mode first") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(
            f"{accuracy_log_path}: truncated or not JSON ({exc.msg}); run the accuracy mode again"
        ) from exc
    utterances = load_manifest(dataset_dir)
    hypotheses, references = [], []
    for n, result in enumerate(results if isinstance(results, list) else [None]):
        where = f"{accuracy_log_path} entry {n}"
        try:
            raw = bytes.fromhex(result["data"])
            idx = int(result["qsl_idx"])
        except (TypeError, KeyError, ValueError) as exc:
            raise HarnessError(
                f"{where}: expected {{qsl_idx, data: hex}} ({exc}); run the accuracy mode again"
            ) from exc
        if len(raw) % 8 or not 0 <= idx < len(utterances):
            raise HarnessError(
                f"{where}: {len(raw)} bytes for qsl_idx {idx} (int64 labels, index below {len(utterances)} expected);"
                " the log does not belong to this dataset"
            )
        hypotheses.append(_text(np.frombuffer(raw, dtype="<i8"), where))
        references.append(utterances[idx].transcript)
    wer, errors, words = word_error_rate(hypotheses, references)
    metrics = {"wer": wer * 100, "accuracy": (1 - wer) * 100, "errors": float(errors), "words": float(words)}
    return metrics, f"Word Error Rate: {wer * 100}%, accuracy={(1 - wer) * 100}%"
