"""AUC as tools/accuracy-dlrm.py computes and prints it, from an mlperf_log_accuracy.json.

The script (labels logged with the predictions, its default): de-duplicate entries by qsl_idx
keeping the first, read each entry's data as float32 ``[prediction, label]`` pairs, count a row
good when the rounded prediction equals the label, and take ``sklearn.metrics.roc_auc_score`` of
labels against predictions over all rows in log order. It prints
``AUC=80.250%, accuracy=..%, good=.., total=.., queries=..``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ...errors import HarnessError

DTYPES = {"float32": np.float32, "int32": np.int32, "int64": np.int64}


def read_pairs(accuracy_log: Path, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, int]:
    """(predictions, labels, queries) over the de-duplicated entries, in log order."""
    try:
        entries = json.loads(accuracy_log.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{accuracy_log}: missing accuracy log") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{accuracy_log}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    seen: set[int] = set()
    chunks: list[np.ndarray] = []
    for entry in entries:
        try:
            idx, data = int(entry["qsl_idx"]), bytes.fromhex(entry["data"])
        except (KeyError, TypeError, ValueError):
            raise HarnessError(f"{accuracy_log}: an entry lacks qsl_idx or hex data: {str(entry)[:80]}") from None
        if idx in seen:
            continue
        seen.add(idx)
        values = np.frombuffer(data, dtype=DTYPES[dtype])
        if values.size % 2:
            raise HarnessError(
                f"{accuracy_log}: qsl_idx {idx} holds {values.size} values, not [prediction, label] pairs "
                "(the responses must carry each row's label)"
            )
        chunks.append(values.reshape(-1, 2))
    pairs = np.concatenate(chunks) if chunks else np.zeros((0, 2), dtype=DTYPES[dtype])
    return pairs[:, 0], pairs[:, 1], len(seen)


def score(accuracy_log: Path, dataset_dir: Path | None = None, dtype: str = "float32") -> tuple[dict[str, float], str]:
    """``(metrics, line)``: AUC and accuracy in percent, good, total, queries, and the line the
    official script prints last. The labels come from the log, so ``dataset_dir`` is not read."""
    import sklearn.exceptions
    import sklearn.metrics

    results, targets, queries = read_pairs(accuracy_log, dtype)
    total = len(results)
    if total == 0:
        raise HarnessError(f"{accuracy_log}: no rows logged (an accuracy run logs every sample)")
    with warnings.catch_warnings():
        # One class only: sklearn warns and returns nan, and the script prints "AUC=nan%" (a fail).
        warnings.simplefilter("ignore", sklearn.exceptions.UndefinedMetricWarning)
        try:
            auc = float(sklearn.metrics.roc_auc_score(targets, results))
        except ValueError as exc:  # older sklearn raises instead
            if "one class" not in str(exc):
                raise
            auc = float("nan")
    good = int(np.count_nonzero(np.round(results) == targets))
    acc = good / total
    line = f"AUC={100.0 * auc:.3f}%, accuracy={100.0 * acc:.3f}%, good={good}, total={total}, queries={queries}"
    metrics = {"AUC": 100.0 * auc, "accuracy": 100.0 * acc, "good": good, "total": total, "queries": queries}
    return metrics, line


def accuracy_command(accuracy_log: Path) -> str:
    """The official script's command for a log whose responses carry the labels."""
    return f"python3 recommendation/dlrm/pytorch/tools/accuracy-dlrm.py --mlperf-accuracy-file {accuracy_log}"
