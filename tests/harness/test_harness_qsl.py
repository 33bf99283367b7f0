"""The sample store holds fixed-shape and ragged named tensors without padding; the QSL loads
exactly the samples LoadGen asks for; a sample can cost several rows of a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlperf_harness.backends.base import TensorSpec
from mlperf_harness.errors import HarnessError
from mlperf_harness.loadgen.qsl import SampleLibrary
from mlperf_harness.samples import MANIFEST, SampleList, SampleStore, write_samples

FIXED = TensorSpec("x", (3,), "float32")
ROWS = TensorSpec("rows", (None, 2), "int32")  # a sample of several rows (dlrm's shape)
VOLUME = TensorSpec("vol", (1, None, None), "uint8")  # varying in two dimensions (3d-unet's shape)


def _samples(n: int) -> list[dict[str, np.ndarray]]:
    return [
        {
            "x": np.arange(3, dtype=np.float32) + 10 * i,
            "rows": np.full((i % 4 + 1, 2), i, dtype=np.int32),
            "vol": np.full((1, i + 1, 2 * i + 1), i, dtype=np.uint8),
        }
        for i in range(n)
    ]


def _store(tmp_path: Path, n: int = 10) -> SampleStore:
    write_samples(tmp_path, [FIXED, ROWS, VOLUME], iter(_samples(n)), n, synthetic=True)
    return SampleStore(tmp_path, [FIXED, ROWS, VOLUME])


def test_ragged_samples_round_trip_without_padding(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for i, want in enumerate(_samples(10)):
        got = store.sample(i)
        assert all(np.array_equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    # Stored as the samples' own elements, no padding to the largest.
    assert (tmp_path / "vol.bin").stat().st_size == sum(s["vol"].size for s in _samples(10))
    assert store.facts["synthetic"] is True and store.ragged
    assert list(store.leading("rows")) == [i % 4 + 1 for i in range(10)]


def test_a_ragged_tensor_of_one_shape_reads_as_fixed(tmp_path: Path) -> None:
    """ssd-resnet34's images: the spec leaves the side open, every sample of a store has one. The
    store reads them as a fixed tensor (a view of its file), so the QSL keeps them in one array and
    the SUT gathers batches into buffers; a tensor whose shapes differ stays ragged beside it."""
    image = TensorSpec("image", (3, None, None), "float32")
    samples = [{"image": np.full((3, 4, 4), i, np.float32), "rows": np.full((i + 1, 2), i, np.int32)} for i in range(5)]
    write_samples(tmp_path, [image, ROWS], iter(samples), 5, synthetic=True)
    store = SampleStore(tmp_path, [image, ROWS])
    assert store.ragged and list(store.fixed) == ["image"] and store.fixed["image"].shape == (5, 3, 4, 4)
    assert all(np.array_equal(store.sample(i)["image"], samples[i]["image"]) for i in range(5))
    assert list(store.leading("image")) == [3] * 5 and list(store.leading("rows")) == [1, 2, 3, 4, 5]
    lib = SampleLibrary(store, 5)
    lib.load([4, 1])
    assert lib.ram["image"].shape == (2, 3, 4, 4) and [r["rows"].shape for r in lib.ragged] == [(5, 2), (2, 2)]
    out = lib.gather(np.array([1, 4, 1]), lib.buffers(4))
    assert [float(x[0, 0, 0]) for x in out["image"]] == [1.0, 4.0, 1.0]

    alone = tmp_path / "alone"
    write_samples(alone, [image], iter({"image": s["image"]} for s in samples), 5, synthetic=True)
    assert not SampleStore(alone, [image]).ragged


def test_store_errors_name_the_file(tmp_path: Path) -> None:
    _store(tmp_path)
    with pytest.raises(HarnessError, match=r"samples\.json: x is float32\[3\], expected int8\[3\]"):
        SampleStore(tmp_path, [TensorSpec("x", (3,), "int8")])
    with pytest.raises(HarnessError, match=r"samples\.json: no tensor 'y'"):
        SampleStore(tmp_path, [TensorSpec("y", (3,), "float32")])
    raw = tmp_path / "vol.bin"
    raw.write_bytes(raw.read_bytes()[:-5])
    with pytest.raises(HarnessError, match=r"vol\.bin: \d+ bytes, expected \d+ \(truncated\?\)"):
        SampleStore(tmp_path)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(HarnessError, match=r"samples\.json: missing preprocessed data; run preprocess first"):
        SampleStore(tmp_path)


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    bad = [*_samples(3), {"x": np.zeros(4, np.float32)}]
    with pytest.raises(HarnessError, match=r"sample 3: x has shape \(4,\), expected \(3,\)"):
        write_samples(tmp_path, [FIXED, ROWS, VOLUME], iter(bad), 4)
    assert list(tmp_path.iterdir()) == []


def test_wrong_fixed_shape_and_dtype_name_the_file(tmp_path: Path) -> None:
    _store(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((10, 4), dtype=np.float32))
    with pytest.raises(HarnessError, match=r"x\.npy: wrong tensor shape \(10, 4\), expected \(10, 3\)"):
        SampleStore(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((10, 3), dtype=np.float64))
    with pytest.raises(HarnessError, match=r"x\.npy: wrong dtype float64"):
        SampleStore(tmp_path)
    (tmp_path / "x.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:100])
    with pytest.raises(HarnessError, match=r"x\.npy: corrupt or truncated"):
        SampleStore(tmp_path)


def test_load_exactly_the_requested_samples(tmp_path: Path) -> None:
    store = _store(tmp_path)
    lib = SampleLibrary(store, performance_sample_count=4, cost_tensor="rows")
    assert lib.performance_count == 4
    lib.load([7, 2, 5, 0])
    assert lib.ram["x"].shape == (4, 3) and lib.ram["x"].flags.c_contiguous
    bufs = lib.buffers(8)
    got = lib.gather(np.array([5, 7, 5]), bufs)
    assert np.array_equal(got["x"], store.fixed["x"][[5, 7, 5]])
    samples = lib.samples(np.array([7, 0]))
    assert samples[0]["vol"].shape == (1, 8, 15) and np.array_equal(samples[1]["rows"], [[0, 0]])
    # rows (varying only in the first dimension) are packed in one array, vol (in two) are not
    assert set(lib.packed) == {"rows"} and np.shares_memory(samples[0]["rows"], lib.packed["rows"].data)
    assert list(lib.costs(np.array([7, 2, 5]))) == [4, 3, 2]
    with pytest.raises(RuntimeError, match="sample 3 was issued but not loaded"):
        lib.gather(np.array([3]), bufs)
    lib.unload([7, 2, 5, 0])
    assert lib.ram == {} and lib.ragged == [] and lib.packed == {}


def test_a_batch_of_packed_samples_is_one_take_into_reused_buffers(tmp_path: Path) -> None:
    """``SampleList.rows`` of the QSL's samples gives what concatenating them gives, in any order
    and with repeats; ``buffer`` hands back the caller's scratch array (grown when too small), and
    a new array without scratch."""
    store = _store(tmp_path)
    lib = SampleLibrary(store, performance_sample_count=6, cost_tensor="rows")
    lib.load([7, 2, 5, 0, 9, 4])
    scratch: dict[str, np.ndarray] = {}
    for query in ([9, 2, 9, 0], [4], [5, 7, 2, 0, 9, 4]):
        batch = lib.samples(np.array(query), scratch)
        want = np.concatenate([store.sample(i)["rows"] for i in query])
        out = batch.buffer("rows", want.shape, want.dtype)
        got = batch.rows("rows", out=out)
        assert np.array_equal(got, want) and np.shares_memory(got, scratch["rows"])
        assert np.array_equal(SampleList(list(batch)).rows("rows"), want)  # a plain list: concatenated
    first = scratch["rows"]
    assert np.shares_memory(lib.samples(np.array([0]), scratch).buffer("rows", (1, 2), np.int32), first)
    assert not np.shares_memory(SampleList([]).buffer("rows", (1, 2), np.int32), first)


def test_performance_count_is_capped_by_the_dataset(tmp_path: Path) -> None:
    assert SampleLibrary(_store(tmp_path, 5), 1024).performance_count == 5


def test_a_query_in_runs_of_rows_gathers_slices_of_the_loaded_set(tmp_path: Path) -> None:
    """Offline's query repeats the loaded samples in LoadGen's order; ``in_runs`` orders it as runs
    of consecutive loaded rows, so a batch of a run is that slice of the loaded set, read-only and
    not copied, and any other batch is copied as before. Every sample keeps its place in the count."""
    store = _store(tmp_path)
    lib = SampleLibrary(store, performance_sample_count=6)
    loaded = [7, 2, 5, 0, 9, 4]
    lib.load(loaded)
    rng = np.random.default_rng(0)
    query = rng.permutation(np.repeat(loaded, 3))  # each loaded sample three times, shuffled
    order = lib.in_runs(query)
    assert sorted(order) == list(range(len(query)))
    assert list(lib.rows(query[order])) == list(range(6)) * 3  # 0..5, then again, then again
    bufs = lib.buffers(4)
    run = lib.gather(query[order][:4], bufs)
    assert np.shares_memory(run["x"], lib.ram["x"]) and not run["x"].flags.writeable
    assert np.array_equal(run["x"], store.fixed["x"][[7, 2, 5, 0]])
    across = lib.gather(query[order][4:8], bufs)  # rows 4, 5, 0, 1: not one slice, copied
    assert np.shares_memory(across["x"], bufs["x"]) and np.array_equal(across["x"], store.fixed["x"][[9, 4, 7, 2]])
