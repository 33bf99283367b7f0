"""dlrm data: the reference's binary test file, its transform and its sample grouping.

The reference (v1.0.1 recommendation/dlrm/pytorch, ``--mlperf-bin-loader`` with
``--samples-to-aggregate-quantile-file=tools/dist_quantile.txt``) reads int32 rows of
[label, 13 dense, 26 sparse], turns dense into ``log(x + 1)`` in float32 and ids into ids modulo
``--max-ind-range``, and groups rows into samples with sizes drawn by numpy's global legacy
generator seeded 123. Those operations are written out below and compared with the harness's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlperf_harness.benchmarks import dlrm
from mlperf_harness.benchmarks.dlrm import criteo
from mlperf_harness.errors import HarnessError

QUANTILE = [100, 100, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 300, 300, 400, 500, 600, 700]
# The first sample sizes of the reference's published verification trace (tools/dist_trace_verification.txt).
PUBLISHED_FIRST_SIZES = [200, 200, 200, 200, 500, 700, 200, 100, 100, 500, 300, 200, 100, 300, 100, 300, 700, 300]


def reference_offsets(rows: int) -> list[int]:
    """criteo.py's loop: one global ``np.random.randint`` per sample until the rows run out."""
    np.random.seed(123)
    offsets, qo = [], 0
    while True:
        offsets.append(qo)
        qo = min(qo + QUANTILE[np.random.randint(low=0, high=len(QUANTILE))], rows)
        if qo >= rows:
            break
    offsets.append(qo)
    return offsets


def reference_sample(table: np.ndarray, s: int, e: int, max_ind_range: int) -> tuple[np.ndarray, ...]:
    """CriteoBinDataset + _transform_features for rows s..e, in numpy."""
    rows = table[s:e]
    dense = np.log(rows[:, 1:14].astype(np.float32) + 1)
    ids = rows[:, 14:] % max_ind_range
    return dense, ids, rows[:, 0].astype(np.float32)


def write_bin(path: Path, rows: np.ndarray) -> None:
    path.write_bytes(np.ascontiguousarray(rows, dtype=np.int32).tobytes())


def test_quantile_draw_equals_the_reference_loop() -> None:
    for rows in (1, 99, 100, 12_345, 300_001):
        assert criteo.quantile_boundaries(rows).tolist() == reference_offsets(rows)
    assert criteo.quantile_sizes(len(PUBLISHED_FIRST_SIZES)).tolist() == PUBLISHED_FIRST_SIZES


def test_the_v1_test_set_has_330067_samples() -> None:
    b = criteo.quantile_boundaries(criteo.TEST_ROWS)
    assert criteo.TEST_ROWS == 89_137_319
    assert len(b) - 1 == criteo.TEST_SAMPLES == 330_067
    assert b[-1] == criteo.TEST_ROWS and np.all(np.diff(b) > 0)
    assert dlrm.DATASET_SIZE == criteo.TEST_SAMPLES and dlrm.PERFORMANCE_SAMPLE_COUNT == 204_800


def test_fixed_grouping() -> None:
    assert criteo.fixed_boundaries(10, 4).tolist() == [0, 4, 8, 10]
    with pytest.raises(HarnessError):
        criteo.fixed_boundaries(10, 0)


def test_preprocess_equals_the_reference_transform(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 1234
    table = np.concatenate(
        [
            rng.integers(0, 2, (n, 1)),
            rng.integers(0, 5000, (n, 13)),
            rng.integers(0, 2**31 - 1, (n, 26)),  # ids above 40M: the modulo matters
        ],
        axis=1,
    ).astype(np.int32)
    write_bin(tmp_path / criteo.TEST_FILE, table)
    ds = criteo.preprocess(tmp_path)
    assert isinstance(ds.rows, np.memmap)
    offsets = reference_offsets(n)
    assert ds.boundaries.tolist() == offsets
    assert len(ds) == len(offsets) - 1
    for i, sample in enumerate(ds):
        dense, ids, label = reference_sample(table, offsets[i], offsets[i + 1], 40_000_000)
        assert sample["dense_x"].dtype == np.float32 and np.array_equal(sample["dense_x"], dense)
        assert sample["indices"].dtype == np.int32 and np.array_equal(sample["indices"], ids)
        assert sample["label"].dtype == np.float32 and np.array_equal(sample["label"], label)
    # --samples-to-aggregate-fix and --count-samples
    fixed = criteo.preprocess(tmp_path, per_sample=100, count=3)
    assert len(fixed) == 3 and fixed.row_counts().tolist() == [100, 100, 100]
    assert np.array_equal(fixed[2]["indices"], reference_sample(table, 200, 300, 40_000_000)[1])
    # per-table modulo (a small model on real ids)
    small = criteo.preprocess(tmp_path, table_sizes=[1000] * 26)
    assert small[0]["indices"].max() < 1000


def test_a_trace_file_beside_the_data_gives_the_grouping(tmp_path: Path) -> None:
    write_bin(tmp_path / criteo.TEST_FILE, np.zeros((50, 40)))
    (tmp_path / criteo.TRACE_FILE).write_text("0, 20, 20\n20, 45, 25\n")
    assert criteo.preprocess(tmp_path).row_counts().tolist() == [20, 25]
    assert criteo.trace_text(np.array([0, 20, 45])) == "0, 20, 20\n20, 45, 25\n"
    (tmp_path / criteo.TRACE_FILE).write_text("0, 20, 20\n21, 45, 24\n")
    with pytest.raises(HarnessError, match="line 2"):
        criteo.preprocess(tmp_path)
    (tmp_path / criteo.TRACE_FILE).write_text("0, 20, 20\n20, 60, 40\n")
    with pytest.raises(HarnessError, match="rows up to 60"):
        criteo.preprocess(tmp_path)


def test_bad_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / criteo.TEST_FILE
    with pytest.raises(HarnessError, match=f"{path}: missing file"):
        criteo.preprocess(tmp_path)
    path.write_bytes(b"\0" * (criteo.ROW_BYTES * 3 + 7))
    with pytest.raises(HarnessError, match="not a whole number of 160-byte rows"):
        criteo.preprocess(tmp_path)


def test_npz_to_test_bin_keeps_the_first_half_as_the_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 7
    y, x_int, x_cat = rng.integers(0, 2, n), rng.integers(0, 99, (n, 13)), rng.integers(0, 10**6, (n, 26))
    np.savez_compressed(tmp_path / "day_23_reordered.npz", X_cat=x_cat.astype(np.int32), X_int=x_int, y=y)
    out = tmp_path / criteo.TEST_FILE
    assert criteo.npz_to_test_bin(tmp_path / "day_23_reordered.npz", out, chunk_rows=3) == 4
    expected = np.concatenate([y.reshape(-1, 1), x_int, x_cat], axis=1).astype(np.int32)[: int(np.ceil(n / 2.0))]
    assert out.read_bytes() == expected.tobytes()
    np.savez_compressed(tmp_path / "bad.npz", y=y, X_int=x_int)
    with pytest.raises(HarnessError, match="missing array 'X_cat'"):
        criteo.npz_to_test_bin(tmp_path / "bad.npz", tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()
