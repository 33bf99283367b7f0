"""Batches counted in rows, the model call, and the responses the reference logs.

A LoadGen sample is a run of rows; a batch is several samples' rows concatenated, as the
reference's ``get_samples`` stacks them: ``dense_x`` (R, 13), ``indices`` (26, R) and ``offsets``
(26, R) = 0..R-1 for every table (one id per bag). The reference's response for a sample is its
rows' ``[prediction, label]`` pairs as float32 (main.py, ``np.array(processed_results[s:e],
np.float32)``): 8 bytes per row, which accuracy-dlrm.py reads with its default ``--dtype float32``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ...backends.base import TensorSpec
from ...errors import HarnessError
from .criteo import DENSE, SPARSE, Sample
from .model import DENSE_INPUT, INDICES, OFFSETS, OUTPUT

# What one sample holds (rows vary per sample). Ids stay int32 as in the file (half the memory
# of the 204,800 loaded samples); collate widens them to the model's int64.
SAMPLE_SPECS = (
    TensorSpec(DENSE_INPUT, (None, DENSE), "float32"),
    TensorSpec(INDICES, (None, SPARSE), "int32"),
    TensorSpec("label", (None,), "float32"),
)
MODEL_INPUTS = (
    TensorSpec(DENSE_INPUT, (None, DENSE), "float32"),
    TensorSpec(OFFSETS, (SPARSE, None), "int64"),
    TensorSpec(INDICES, (SPARSE, None), "int64"),
)
MODEL_OUTPUT = TensorSpec(OUTPUT, (None, 1), "float32")


def rows_of(sample: Sample) -> int:
    return len(sample[DENSE_INPUT])


def batches_by_rows(row_counts: Sequence[int], max_rows: int) -> list[list[int]]:
    """Consecutive samples grouped so that each batch holds at most ``max_rows`` rows (a sample
    larger than that goes alone): the batch size of DLRM counts rows, not samples."""
    batches: list[list[int]] = []
    rows = 0
    for i, n in enumerate(row_counts):
        if batches and rows + n <= max_rows:
            batches[-1].append(i)
            rows += n
        else:
            batches.append([i])
            rows = n
    return batches


def collate(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """The model inputs for several samples, rows concatenated in order."""
    if not samples:
        raise HarnessError("dlrm: collate needs at least one sample")
    dense = np.concatenate([s[DENSE_INPUT] for s in samples]) if len(samples) > 1 else samples[0][DENSE_INPUT]
    ids = np.concatenate([s[INDICES] for s in samples]) if len(samples) > 1 else samples[0][INDICES]
    rows = len(dense)
    if dense.shape != (rows, DENSE) or ids.shape != (rows, SPARSE):
        raise HarnessError(f"dlrm: a sample has dense {dense.shape[1:]} and ids {ids.shape[1:]}, not (13,) and (26,)")
    return {
        DENSE_INPUT: np.ascontiguousarray(dense, dtype=np.float32),
        OFFSETS: np.broadcast_to(np.arange(rows, dtype=np.int64), (SPARSE, rows)).copy(),
        INDICES: np.ascontiguousarray(ids.T, dtype=np.int64),
    }


Batch = dict[str, np.ndarray]


def infer(run: Callable[[Batch], Batch], batch: Batch) -> Batch:
    """One model call per batch."""
    return run(batch)


def responses(outputs: dict[str, np.ndarray], samples: Sequence[Sample]) -> list[np.ndarray]:
    """Per sample, its rows' ``[prediction, label]`` pairs as one float32 array (2 x rows)."""
    pred = np.asarray(outputs[OUTPUT], dtype=np.float32).reshape(-1)
    counts = [rows_of(s) for s in samples]
    if len(pred) != sum(counts):
        raise HarnessError(f"dlrm: the model returned {len(pred)} predictions for {sum(counts)} rows")
    out: list[np.ndarray] = []
    start = 0
    for s, n in zip(samples, counts, strict=True):
        pairs = np.stack([pred[start : start + n], np.asarray(s["label"], dtype=np.float32)], axis=1)
        out.append(pairs.reshape(-1))
        start += n
    return out
