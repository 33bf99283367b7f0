"""Criteo Terabyte day 23 as the v1.0 reference reads it, grouped into LoadGen samples.

The reference (recommendation/dlrm/pytorch, ``--mlperf-bin-loader``) reads the test half of day 23
from ``terabyte_processed_test.bin``: the first ceil(rows / 2) rows of ``day_23_reordered.npz``,
each row 40 int32 values ``[label, 13 dense counts, 26 categorical ids]``, no header. That file is
fixed-width, so it is memory-mapped here and never read whole. Each row becomes ``log(x + 1)``
dense features (float32), ids modulo ``--max-ind-range`` (40M for tb00_40M) and a float32 label.

One LoadGen sample is one user's query: a run of consecutive rows (user-item pairs). The official
runs draw each sample's row count from the quantile file (tools/dist_quantile.txt) with numpy's
legacy generator seeded 123 (main.py's ``--numpy-rand-seed``): 330,067 samples over the
89,137,319 test rows, the trace published as ``dlrm_trace_of_aggregated_samples.txt``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ...errors import HarnessError

TEST_FILE = "terabyte_processed_test.bin"
COUNTS_FILE = "day_fea_count.npz"  # the reference's ``<data>/day_fea_count.npz`` ("counts": rows per table)
TRACE_FILE = "dlrm_trace_of_aggregated_samples.txt"  # "start, end, rows" per sample
DATASET_JSON = "dataset.json"

DENSE = 13
SPARSE = 26
FIELDS = 1 + DENSE + SPARSE
ROW_BYTES = 4 * FIELDS

MAX_IND_RANGE = 40_000_000  # tb00_40M was trained with --max-ind-range=40000000
DAY23_ROWS = 178_274_637
TEST_ROWS = (DAY23_ROWS + 1) // 2  # the "test" split: the first ceil(rows / 2) rows of day 23
TEST_SAMPLES = 330_067  # samples of the quantile trace over TEST_ROWS: the v1.0 QSL size

# Row counts per sample, a quantile function sampled uniformly (inverse transform): mean 270 rows.
QUANTILE = (100, 100, *(200,) * 12, 300, 300, 400, 500, 600, 700)
QUANTILE_SEED = 123

Sample = dict[str, np.ndarray]


def quantile_sizes(n: int, seed: int = QUANTILE_SEED, quantile: Sequence[int] = QUANTILE) -> np.ndarray:
    """The first ``n`` sample sizes the reference draws: one ``randint(0, len(quantile))`` each
    from numpy's legacy global generator seeded ``seed`` (vector draws give the same stream)."""
    rs = np.random.RandomState(seed)
    return np.asarray(quantile, dtype=np.int64)[rs.randint(low=0, high=len(quantile), size=n)]


def quantile_boundaries(rows: int, seed: int = QUANTILE_SEED, quantile: Sequence[int] = QUANTILE) -> np.ndarray:
    """Sample boundaries ``b`` (sample i = rows b[i]:b[i+1]) as the reference draws them for a test
    set of ``rows`` rows: sizes from the quantile until the rows run out, the last one cut short."""
    rs = np.random.RandomState(seed)
    q = np.asarray(quantile, dtype=np.int64)
    ends: list[np.ndarray] = []
    done = 0
    chunk = max(1024, rows // min(quantile) // 8)
    while done < rows:
        cum = done + np.cumsum(q[rs.randint(low=0, high=len(q), size=chunk)])
        last = int(np.searchsorted(cum, rows))  # first sample that reaches the end
        if last < len(cum):
            cum = cum[: last + 1]
            cum[-1] = rows
        ends.append(cum)
        done = int(cum[-1])
    return np.concatenate([np.zeros(1, dtype=np.int64), *ends])


def fixed_boundaries(rows: int, per_sample: int) -> np.ndarray:
    """``--samples-to-aggregate-fix``: every sample ``per_sample`` rows, the last one what is left."""
    if per_sample < 1:
        raise HarnessError(f"dlrm: rows per sample must be at least 1, got {per_sample}")
    return np.append(np.arange(0, rows, per_sample, dtype=np.int64), np.int64(rows))


def read_trace(path: Path) -> np.ndarray:
    """Boundaries from a trace file the reference writes (``start, end, rows`` per line)."""
    starts: list[int] = []
    ends: list[int] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"\s*(\d+),\s*(\d+),\s*(\d+)\s*", line)
        if not m or int(m[2]) - int(m[1]) != int(m[3]) or (ends and int(m[1]) != ends[-1]):
            raise HarnessError(f"{path}: line {n} is not 'start, end, rows' after the line before: {line[:80]!r}")
        starts.append(int(m[1]))
        ends.append(int(m[2]))
    if not starts or starts[0] != 0:
        raise HarnessError(f"{path}: empty or not starting at row 0 (the trace must cover the rows from the first)")
    return np.asarray([0, *ends], dtype=np.int64)


def trace_text(boundaries: np.ndarray) -> str:
    """The reference's trace format: ``start, end, rows`` per sample."""
    b = [int(x) for x in boundaries]
    return "".join(f"{s}, {e}, {e - s}\n" for s, e in itertools.pairwise(b))


def open_rows(path: Path) -> np.memmap:
    """The test file as a read-only (rows, 40) int32 memory map, checked for whole rows."""
    if not path.is_file():
        raise HarnessError(
            f"{path}: missing file (the reference's test set: the first half of day_23_reordered.npz as int32 "
            "rows of label, 13 dense, 26 sparse; make it with npz_to_test_bin or use a synthetic dataset)"
        )
    size = path.stat().st_size
    if size == 0 or size % ROW_BYTES:
        raise HarnessError(
            f"{path}: {size} bytes is not a whole number of {ROW_BYTES}-byte rows (truncated or not the "
            "reference's binary test file); download or convert it again"
        )
    return np.memmap(path, dtype=np.int32, mode="r", shape=(size // ROW_BYTES, FIELDS))


def transform(rows: np.ndarray, max_ind_range: int = MAX_IND_RANGE, table_sizes: Sequence[int] | None = None) -> Sample:
    """The reference's transform of raw rows: ``log(dense + 1)`` in float32, ids modulo
    ``max_ind_range`` (and, where given, modulo each table's size: a no-op for the real model,
    whose tables hold min(count, 40M) rows), the label as float32."""
    dense = np.log(rows[:, 1 : 1 + DENSE].astype(np.float32) + np.float32(1))
    ids = rows[:, 1 + DENSE :]
    if max_ind_range > 0:
        ids = ids % max_ind_range
    if table_sizes is not None:
        ids = ids % np.asarray(table_sizes, dtype=np.int64)
    return {
        "dense_x": dense,
        "indices": np.ascontiguousarray(ids, dtype=np.int32),
        "label": rows[:, 0].astype(np.float32),
    }


class CriteoTestSet:
    """The LoadGen samples of a test file: ``len()``, ``[i]`` (one sample's rows, read from the
    memory map on demand) and iteration in QSL order."""

    def __init__(
        self,
        path: Path,
        boundaries: np.ndarray,
        max_ind_range: int = MAX_IND_RANGE,
        table_sizes: Sequence[int] | None = None,
    ) -> None:
        self.path = path
        self.rows = open_rows(path)
        if len(boundaries) < 2 or int(boundaries[-1]) > len(self.rows) or np.any(np.diff(boundaries) <= 0):
            raise HarnessError(
                f"{path}: the sample grouping needs rows up to {int(boundaries[-1])} but the file has "
                f"{len(self.rows)}; use the trace of this file (or none, to draw it again)"
            )
        self.boundaries = np.asarray(boundaries, dtype=np.int64)
        self.max_ind_range = max_ind_range
        self.table_sizes = None if table_sizes is None else tuple(table_sizes)

    def __len__(self) -> int:
        return len(self.boundaries) - 1

    def row_counts(self) -> np.ndarray:
        return np.diff(self.boundaries)

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s, e = int(self.boundaries[i]), int(self.boundaries[i + 1])
        return transform(np.asarray(self.rows[s:e]), self.max_ind_range, self.table_sizes)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def preprocess(
    dataset_dir: Path,
    *,
    count: int | None = None,
    per_sample: int | None = None,
    max_ind_range: int = MAX_IND_RANGE,
    table_sizes: Sequence[int] | None = None,
) -> CriteoTestSet:
    """The samples of ``dataset_dir/terabyte_processed_test.bin`` in QSL order.

    Grouping: ``per_sample`` rows each when given (``--samples-to-aggregate-fix``); otherwise the
    trace file beside the data when there is one; otherwise the quantile draw the official runs
    use. ``count`` keeps the first samples only (``--count-samples``).
    """
    path = dataset_dir / TEST_FILE
    rows = len(open_rows(path))
    trace = dataset_dir / TRACE_FILE
    if per_sample is not None:
        boundaries = fixed_boundaries(rows, per_sample)
    elif trace.is_file():
        boundaries = read_trace(trace)
    else:
        boundaries = quantile_boundaries(rows)
    if count is not None:
        boundaries = boundaries[: count + 1]
    return CriteoTestSet(path, boundaries, max_ind_range, table_sizes)


def npz_to_test_bin(npz_path: Path, out_path: Path, chunk_rows: int = 1 << 20) -> int:
    """Write the reference's ``terabyte_processed_test.bin`` from ``day_23_reordered.npz``: the
    first ceil(rows / 2) rows of ``[y, X_int, X_cat]`` as int32. The npz members are streamed
    (a compressed npz cannot be memory-mapped), so memory stays at ``chunk_rows`` rows."""
    import zipfile

    from ...fsutil import temp_path_for

    try:
        zf = zipfile.ZipFile(npz_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise HarnessError(f"{npz_path}: not a readable npz ({exc})") from None
    with zf:
        streams = {}
        for key, width in (("y", 1), ("X_int", DENSE), ("X_cat", SPARSE)):
            try:
                fh = zf.open(f"{key}.npy")
            except KeyError:
                raise HarnessError(f"{npz_path}: missing array {key!r} (expected y, X_int, X_cat)") from None
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            if fortran or shape[1:] not in ((), (width,)):
                raise HarnessError(f"{npz_path}: {key} has shape {shape}, expected (rows, {width}) in C order")
            streams[key] = (fh, dtype, width, shape[0])
        total = {s[3] for s in streams.values()}
        if len(total) != 1:
            raise HarnessError(f"{npz_path}: y, X_int and X_cat have different row counts {sorted(total)}")
        test_rows = (total.pop() + 1) // 2
        with temp_path_for(out_path) as tmp, tmp.open("wb") as out:
            done = 0
            while done < test_rows:
                n = min(chunk_rows, test_rows - done)
                parts = []
                for fh, dtype, width, _ in streams.values():
                    raw = fh.read(n * width * dtype.itemsize)
                    if len(raw) != n * width * dtype.itemsize:
                        raise HarnessError(f"{npz_path}: truncated archive (a member ends early)")
                    parts.append(np.frombuffer(raw, dtype=dtype).reshape(n, width).astype(np.int32))
                out.write(np.concatenate(parts, axis=1).tobytes())
                done += n
    return test_rows


def synthetic_rows(seed: int, start: int, count: int, table_sizes: Sequence[int]) -> np.ndarray:
    """Rows ``start:start+count`` of a deterministic synthetic test file (label 0 for now): dense
    counts heavy-tailed like Criteo's (a third zero), ids skewed towards small ids within each
    table. Generated in fixed blocks so any slice is the same whatever the chunking."""
    block = 1 << 14
    sizes = np.asarray(table_sizes, dtype=np.float64)
    out = np.empty((count, FIELDS), dtype=np.int32)
    first, last = start // block, (start + count - 1) // block
    for b in range(first, last + 1):
        rng = np.random.default_rng([seed, 0xC1E0, b])
        dense = np.floor(rng.lognormal(1.0, 1.6, (block, DENSE)))
        dense[rng.random((block, DENSE)) < 0.33] = 0
        ids = np.floor(sizes * rng.random((block, SPARSE)) ** 3)
        rows = np.concatenate([np.zeros((block, 1)), np.minimum(dense, 2**31 - 1), ids], axis=1).astype(np.int32)
        lo, hi = max(start, b * block), min(start + count, (b + 1) * block)
        out[lo - start : hi - start] = rows[lo - b * block : hi - b * block]
    return out
