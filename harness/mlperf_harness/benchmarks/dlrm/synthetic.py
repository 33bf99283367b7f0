"""A synthetic Criteo test set in the reference's layout, labelled by the FP32 synthetic model.

Files (the reference's names): ``terabyte_processed_test.bin`` (int32 rows of label, 13 dense,
26 sparse), ``day_fea_count.npz`` (``counts``: rows per table), the aggregation trace
``dlrm_trace_of_aggregated_samples.txt``, and ``dataset.json`` saying SYNTHETIC. The ``n``
samples have the sizes the reference draws (the quantile file, seed 123), so the reference's
own grouping of this file gives the same ``n`` samples. Each row's label is the model's click
(prediction > 0.5): every click scores above every non-click, so the FP32 model's AUC is 100 %.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import HarnessError
from ...fsutil import atomic_write_text, temp_path_for
from .batching import collate
from .criteo import COUNTS_FILE, DATASET_JSON, FIELDS, TEST_FILE, TRACE_FILE, quantile_sizes, synthetic_rows, trace_text
from .criteo import transform as transform_rows
from .model import OUTPUT, model_table_sizes

CHUNK = 1 << 15  # rows labelled per model call


def _boundaries(n: int) -> np.ndarray:
    if n < 1:
        raise HarnessError(f"dlrm: a synthetic dataset needs at least one sample, got {n}")
    return np.concatenate([[0], np.cumsum(quantile_sizes(n))]).astype(np.int64)


def used_rows(seed: int, n: int, sizes: Sequence[int]) -> list[np.ndarray]:
    """Per table, the sorted distinct ids the ``n`` samples of ``seed`` look up: what a labeller's
    model needs (``model.kept_rows``, ``model.build_model(keep=...)``)."""
    total = int(_boundaries(n)[-1])
    seen = [np.zeros(size, bool) for size in sizes]  # one flag a row (188 MB at full size): linear in the rows
    for start in range(0, total, CHUNK):
        ids = transform_rows(synthetic_rows(seed, start, min(CHUNK, total - start), sizes))["indices"]
        for t, flags in enumerate(seen):
            flags[ids[:, t]] = True
    return [np.flatnonzero(flags) for flags in seen]


def _positions(kept: Sequence[np.ndarray], ids: np.ndarray, model_path: Path) -> np.ndarray:
    """Each id's row in a labeller's tables (``kept``)."""
    cols = []
    for t, k in enumerate(kept):
        at = np.minimum(np.searchsorted(k, ids[:, t]), len(k) - 1)
        if not np.array_equal(k[at], ids[:, t]):
            raise HarnessError(f"{model_path}: table {t} lacks rows the samples use; build it with keep=used_rows(...)")
        cols.append(at)
    return np.stack(cols, axis=1)


def synthesize_dataset(
    out_dir: Path,
    seed: int,
    n: int,
    model_path: Path,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    kept: Sequence[np.ndarray] | None = None,
) -> dict[str, object]:
    """Write ``n`` synthetic samples into ``out_dir``; return the facts written to dataset.json.
    ``providers``: onnxruntime's, for labelling (CUDA for many rows). ``kept``: the model is a
    labeller's (``build_model(keep=kept)``) holding rows ``kept[t]`` of table ``t``; each id is
    looked up at its position there (every id the samples use must be kept: ``used_rows``)."""
    import onnxruntime as ort

    boundaries = _boundaries(n)
    sizes = model_table_sizes(model_path)
    total = int(boundaries[-1])
    sess = ort.InferenceSession(str(model_path), providers=list(providers))
    clicks = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    with temp_path_for(out_dir / TEST_FILE) as tmp:
        data = np.memmap(tmp, dtype=np.int32, mode="w+", shape=(total, FIELDS))
        for start in range(0, total, CHUNK):
            block = synthetic_rows(seed, start, min(CHUNK, total - start), sizes)
            sample = transform_rows(block)
            if kept is not None:
                sample = {**sample, "indices": _positions(kept, sample["indices"], model_path)}
            pred = sess.run([OUTPUT], collate([sample]))[0].reshape(-1)
            block[:, 0] = pred > 0.5
            clicks += int(block[:, 0].sum())
            data[start : start + len(block)] = block
        data.flush()
        del data
    if clicks in (0, total):
        raise HarnessError(f"{out_dir / TEST_FILE}: the synthetic labels are all {clicks and 1}; use more samples")
    with temp_path_for(out_dir / COUNTS_FILE) as tmp, tmp.open("wb") as fh:
        np.savez(fh, counts=np.asarray(sizes, dtype=np.int32))
    atomic_write_text(out_dir / TRACE_FILE, trace_text(boundaries))
    facts: dict[str, object] = {
        "synthetic": True,
        "note": "SYNTHETIC: random rows labelled by the FP32 synthetic DLRM's own clicks (prediction > 0.5)",
        "seed": seed,
        "samples": n,
        "rows": total,
        "clicks": clicks,
        "tableSizes": list(sizes),
        "model": model_path.name,
    }
    atomic_write_text(out_dir / DATASET_JSON, json.dumps(facts, indent=2) + "\n")
    return facts
