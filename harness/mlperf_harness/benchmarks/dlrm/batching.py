"""Batches counted in rows, the model call, and the responses the reference logs.

A LoadGen sample is a run of rows; a batch is several samples' rows concatenated, as the
reference's ``get_samples`` stacks them: ``dense_x`` (R, 13), ``indices`` (26, R) and ``offsets``
(26, R) = 0..R-1 for every table (one id per bag). The reference's response for a sample is its
rows' ``[prediction, label]`` pairs as float32 (main.py, ``np.array(processed_results[s:e],
np.float32)``): 8 bytes per row, which accuracy-dlrm.py reads with its default ``--dtype float32``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ...backends.base import TensorSpec
from ...errors import HarnessError
from ...samples import SampleList
from .criteo import DENSE, SPARSE, Sample
from .model import DENSE_INPUT, INDICES, OFFSETS, OUTPUT

# What one sample holds (rows vary per sample). Ids stay int32 as in the file (half the memory
# of the 204,800 loaded samples); collate widens them to the model's int64.
LABEL = "label"  # stored with the sample: the reference logs it beside each prediction
SAMPLE_SPECS = (
    TensorSpec(DENSE_INPUT, (None, DENSE), "float32"),
    TensorSpec(INDICES, (None, SPARSE), "int32"),
    TensorSpec(LABEL, (None,), "float32"),
)
MODEL_INPUTS = (
    TensorSpec(DENSE_INPUT, (None, DENSE), "float32"),
    TensorSpec(OFFSETS, (SPARSE, None), "int64"),
    TensorSpec(INDICES, (SPARSE, None), "int64"),
)
MODEL_OUTPUT = TensorSpec(OUTPUT, (1,), "float32")  # per row


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
    """The model inputs for several samples, rows concatenated in order, in a few numpy calls
    whatever the count of samples (``SampleList``): the ids' rows taken at once, then transposed a
    block of rows at a time (a block stays in cache, where the whole batch at once strides through
    memory), into the worker's own arrays; the offsets (0..N-1 for every table) a view of one row.
    The harness's host work is what holds dlrm back on a GPU (BENCHMARKS.md)."""
    if not samples:
        raise HarnessError("dlrm: collate needs at least one sample")
    batch = SampleList.of(samples)
    rows = 0
    for s in batch:
        dense, ids = s[DENSE_INPUT], s[INDICES]
        if dense.shape[1:] != (DENSE,) or ids.shape != (len(dense), SPARSE):
            raise HarnessError(
                f"dlrm: a sample has dense {dense.shape} and ids {ids.shape}, not (rows, 13) and (rows, 26)"
            )
        rows += len(dense)
    dense = batch.rows(DENSE_INPUT, out=batch.buffer(DENSE_INPUT, (rows, DENSE), batch[0][DENSE_INPUT].dtype))
    ids = batch.rows(INDICES, out=batch.buffer("ids", (rows, SPARSE), batch[0][INDICES].dtype))
    indices = batch.buffer(INDICES, (SPARSE, rows), np.int64)
    for at in range(0, rows, TRANSPOSE_BLOCK):
        indices[:, at : at + TRANSPOSE_BLOCK] = ids[at : at + TRANSPOSE_BLOCK].T
    return {DENSE_INPUT: dense.astype(np.float32, copy=False), OFFSETS: row_numbers(rows, SPARSE), INDICES: indices}


# Rows: 4,096 x 26 ids (416 KiB) stay in L2. A 65,536-row batch here (2026-12-05, by hand):
# blocks of 1,024-4,096 rows 1.7 ms, of 16,384 2.1 ms, the whole batch at once 6 ms.
TRANSPOSE_BLOCK = 4096
_ROW_NUMBERS = np.arange(1 << 16, dtype=np.int64)


def row_numbers(rows: int, times: int) -> np.ndarray:
    """0..rows-1 repeated ``times`` times, (times, rows), as a view of one shared row (no bytes
    written per batch: each table's offsets, one id per bag). Read-only in use; writable as
    arrays go, so torch takes it without a warning."""
    global _ROW_NUMBERS
    if len(_ROW_NUMBERS) < rows:
        _ROW_NUMBERS = np.arange(max(rows, 2 * len(_ROW_NUMBERS)), dtype=np.int64)
    base = _ROW_NUMBERS[:rows]
    return np.lib.stride_tricks.as_strided(base, (times, rows), (0, base.strides[0]))


def labels(samples: Sequence[Sample]) -> np.ndarray:
    """The samples' labels, rows concatenated as ``collate`` concatenates their inputs."""
    batch = SampleList.of(samples)
    return batch.rows(LABEL).astype(np.float32, copy=False).reshape(-1)


Batch = dict[str, np.ndarray]


def infer(run: Callable[[Batch], Batch], batch: Batch) -> Batch:
    """One model call per batch. The labels travel beside the model inputs (the model does not
    take them) and come back beside its outputs, for the responses."""
    feeds = {k: v for k, v in batch.items() if k != LABEL}
    out = dict(run(feeds))
    if LABEL in batch:
        out[LABEL] = batch[LABEL]
    return out


def responses(outputs: Mapping[str, np.ndarray], rows: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """Per sample (``rows``: each sample's row count, in batch order), its rows' ``[prediction,
    label]`` pairs as one float32 array (2 x rows). Outputs without labels (the null backend's)
    log zeros in their place: the same bytes per sample, which is what a timing run measures."""
    pred = np.asarray(outputs[OUTPUT], dtype=np.float32).reshape(-1)
    counts = np.asarray(rows, dtype=np.int64)
    total = int(counts.sum())
    if len(pred) != total:
        raise HarnessError(f"dlrm: the model returned {len(pred)} predictions for {total} rows")
    pairs = np.zeros((total, 2), dtype=np.float32)
    pairs[:, 0] = pred
    if LABEL in outputs:
        pairs[:, 1] = np.asarray(outputs[LABEL], dtype=np.float32).reshape(-1)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [pairs[s:e].reshape(-1) for s, e in itertools.pairwise(bounds.tolist())]
