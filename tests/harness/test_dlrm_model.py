"""The synthetic DLRM: the reference's interface, DLRM's forward pass, tables inline or external.

DLRM's forward pass (dlrm_s_pytorch.py: ReLU MLPs, EmbeddingBag sums, dot interaction of the
bottom output with the 26 embeddings keeping the pairs below the diagonal, sigmoid) is written
out in numpy below and compared with onnxruntime on the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlperf_harness.benchmarks.dlrm import criteo, model, synthetic
from mlperf_harness.benchmarks.dlrm.batching import collate
from mlperf_harness.errors import HarnessError
from mlperf_harness.samples import Packed, SampleList
from onnx import numpy_helper


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.build_model(tmp_path_factory.mktemp("dlrm-model") / "dlrm.onnx", seed=5)


def weights(path: Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def reference_forward(
    w: dict[str, np.ndarray], dense: np.ndarray, offsets: np.ndarray, indices: np.ndarray
) -> np.ndarray:
    x = dense
    for k in range(3):
        x = np.maximum(x @ w[f"bot_l.{k}.weight"] + w[f"bot_l.{k}.bias"], 0)
    ly = []
    for t in range(26):  # EmbeddingBag(mode="sum"): bag r holds indices[t, offsets[t, r] : offsets[t, r + 1]]
        ends = [*offsets[t, 1:], indices.shape[1]]
        table = w[f"emb_{t}"].astype(np.float32)  # float16 tables: the graph casts each row to float32
        ly.append(np.stack([table[indices[t, s:e]].sum(axis=0) for s, e in zip(offsets[t], ends, strict=True)]))
    feats = [x, *ly]
    pairs = [np.sum(feats[i] * feats[j], axis=1) for i in range(27) for j in range(i)]
    h = np.concatenate([x, np.stack(pairs, axis=1)], axis=1)
    for k in range(5):
        h = h @ w[f"top_l.{k}.weight"] + w[f"top_l.{k}.bias"]
        h = np.maximum(h, 0) if k < 4 else 1 / (1 + np.exp(-h))
    return h


def batch(rows: int, seed: int = 3) -> dict[str, np.ndarray]:
    return collate([criteo.transform(criteo.synthetic_rows(seed, 0, rows, model.table_sizes("small")))])


def run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["pred"], feed)[0])


def test_interface_is_the_reference_exports(small: Path) -> None:
    sess = ort.InferenceSession(str(small), providers=["CPUExecutionProvider"])
    ins = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    assert ins == {
        "dense_x": ("tensor(float)", ["batch_size", 13]),
        "offsets": ("tensor(int64)", [26, "batch_size"]),
        "indices": ("tensor(int64)", [26, "batch_size"]),
    }
    assert [(o.name, o.type, o.shape) for o in sess.get_outputs()] == [("pred", "tensor(float)", ["batch_size", 1])]
    w = weights(small)
    assert [w[f"bot_l.{k}.weight"].shape for k in range(3)] == [(13, 512), (512, 256), (256, 128)]
    assert [w[f"top_l.{k}.weight"].shape for k in range(5)] == [
        (479, 1024),
        (1024, 1024),
        (1024, 512),
        (512, 256),
        (256, 1),
    ]
    assert [w[f"emb_{t}"].shape for t in range(26)] == [(min(n, 1000), 128) for n in model.TABLE_SIZES_FULL]
    assert "SYNTHETIC" in onnx.load(str(small), load_external_data=False).doc_string


def test_graph_equals_dlrm_forward(small: Path) -> None:
    feed = batch(300)
    ours = run(small, feed)
    ref = reference_forward(weights(small), feed["dense_x"], feed["offsets"], feed["indices"])
    assert ours.shape == (300, 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    assert 0.3 < float((ours > 0.5).mean()) < 0.7, "predictions should split into clicks and non-clicks"


def test_offsets_pick_each_bags_id(small: Path) -> None:
    feed = batch(64)
    rev = dict(feed, offsets=feed["offsets"][:, ::-1].copy())  # bag r now holds the id at position 63 - r
    flipped = dict(feed, indices=feed["indices"][:, ::-1].copy())
    np.testing.assert_allclose(run(small, rev), run(small, flipped), rtol=1e-6)
    assert not np.allclose(run(small, rev), run(small, feed))


def test_sparse_features_move_the_prediction(small: Path) -> None:
    feed = batch(256)
    shifted = dict(feed, indices=(feed["indices"] + 1) % 3)
    assert np.abs(run(small, feed) - run(small, shifted)).mean() > 1e-3


def test_external_tables_equal_inline_and_seeds_are_deterministic(small: Path, tmp_path: Path) -> None:
    ext = model.build_model(tmp_path / "ext.onnx", seed=5, external=True)
    data = tmp_path / "ext.onnx.data"
    table_bytes = sum(model.table_sizes("small")) * 128 * 2  # float16
    assert data.stat().st_size >= table_bytes and ext.stat().st_size < small.stat().st_size - table_bytes + 2**16
    tables = [t for t in onnx.load(str(ext), load_external_data=False).graph.initializer if t.name.startswith("emb_")]
    assert len(tables) == 26 and all(t.data_location == onnx.TensorProto.EXTERNAL for t in tables)
    assert all(int(dict((e.key, e.value) for e in t.external_data)["offset"]) % model.ALIGN == 0 for t in tables)
    feed = batch(128)
    assert np.array_equal(run(ext, feed), run(small, feed))
    again = model.build_model(tmp_path / "again.onnx", seed=5)
    assert again.read_bytes() == small.read_bytes()
    other = model.build_model(tmp_path / "other.onnx", seed=6)
    assert not np.allclose(run(other, feed), run(small, feed))
    assert model.model_table_sizes(ext) == model.table_sizes("small")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx", "ext.onnx", "ext.onnx.data", "other.onnx"]


def test_sizes() -> None:
    full = model.table_sizes("full")  # the spec's size: full
    assert len(full) == 26 and sum(full) == 187_767_399 and max(full) <= 40_000_000
    assert sum(full) * model.ROW_BYTES / 2**30 == pytest.approx(44.8, abs=0.1)  # float16: fits a 64 GiB disk
    with pytest.raises(HarnessError, match="one of full, small, got 'medium'"):
        model.table_sizes("medium")
    with pytest.raises(HarnessError, match="rows for 26 tables, got 2"):
        model.build_model(Path("unused.onnx"), 1, sizes=[5, 5])


def test_labeller_model_holds_only_the_rows_it_needs(tmp_path: Path) -> None:
    """A labeller's model (keep) predicts what the whole model does on the rows it kept."""
    sizes = [5000] * 26
    whole = model.build_model(tmp_path / "whole.onnx", seed=3, sizes=sizes, external=True)
    feed = collate([criteo.transform(criteo.synthetic_rows(7, 0, 200, sizes))])
    used = [np.unique(feed["indices"][t]) for t in range(26)]
    kept = model.kept_rows(3, sizes, used)
    part = model.build_model(tmp_path / "part.onnx", seed=3, sizes=sizes, external=True, keep=kept)
    assert (tmp_path / "part.onnx.data").stat().st_size < (tmp_path / "whole.onnx.data").stat().st_size / 2
    mapped = np.stack([np.searchsorted(kept[t], feed["indices"][t]) for t in range(26)])
    np.testing.assert_array_equal(run(part, dict(feed, indices=mapped)), run(whole, feed))
    assert model.model_table_sizes(part) == model.model_table_sizes(whole) == tuple(sizes)
    with pytest.raises(HarnessError, match="keep must hold the calibration rows"):
        model.build_model(tmp_path / "bad.onnx", seed=3, sizes=sizes, keep=used)


def test_table_writer_streams_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-size path writes chunk by chunk (never a whole table): with tiny chunks, a table
    spans many chunks and the file still holds exactly what the inline model holds."""
    monkeypatch.setattr(model, "CHUNK_ROWS", 64)
    ext = model.build_model(tmp_path / "c.onnx", seed=2, external=True)
    inline = model.build_model(tmp_path / "i.onnx", seed=2)
    w_ext = {t.name: numpy_helper.to_array(t, base_dir=str(tmp_path)) for t in onnx.load(str(ext)).graph.initializer}
    assert all(np.array_equal(w_ext[k], v) for k, v in weights(inline).items())


def test_table_sizes_of_a_file_that_is_not_the_synthetic_dlrm(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(HarnessError, match=f"{bad}: not a readable ONNX model"):
        model.model_table_sizes(bad)


def test_a_labeller_with_the_used_rows_labels_as_the_whole_model(tmp_path: Path) -> None:
    """download-data's labeller (only the rows its samples use) writes the test file the whole model would."""
    sizes = [20_000] * 26
    whole = model.build_model(tmp_path / "whole.onnx", seed=4, sizes=sizes, external=True)
    kept = model.kept_rows(4, sizes, synthetic.used_rows(4, 3, sizes))
    part = model.build_model(tmp_path / "part.onnx", seed=4, sizes=sizes, external=True, keep=kept)
    a = synthetic.synthesize_dataset(tmp_path / "a", 4, 3, whole)
    b = synthetic.synthesize_dataset(tmp_path / "b", 4, 3, part, kept=kept)
    assert {**a, "model": "part.onnx"} == b and 0 < int(b["clicks"]) < int(b["rows"])  # type: ignore[call-overload]
    assert (tmp_path / "a" / criteo.TEST_FILE).read_bytes() == (tmp_path / "b" / criteo.TEST_FILE).read_bytes()
    with pytest.raises(HarnessError, match="table 0 lacks rows the samples use"):
        synthetic.synthesize_dataset(tmp_path / "c", 5, 3, part, kept=kept)


def test_collate_concatenates_rows_and_transposes_ids() -> None:
    """Several samples' rows in order, as the reference's get_samples stacks them: dense (R, 13),
    indices (26, R) int64 (each sample's ids transposed into place), offsets 0..R-1 per table; a
    sample of the wrong width is named."""
    rng = np.random.default_rng(1)
    samples = [
        {"dense_x": rng.random((n, 13), dtype=np.float32), "indices": rng.integers(0, 1 << 30, (n, 26), dtype=np.int32)}
        for n in (3, 1, 7)
    ]
    got = collate(samples)
    ids = np.concatenate([s["indices"] for s in samples])
    assert np.array_equal(got["dense_x"], np.concatenate([s["dense_x"] for s in samples]))
    assert got["indices"].dtype == np.int64 and np.array_equal(got["indices"], ids.T)
    assert got["offsets"].shape == (26, 11) and (got["offsets"] == np.arange(11)).all()
    assert got["offsets"].strides[0] == 0  # one row, viewed 26 times: no bytes written per batch
    bad = {"dense_x": np.zeros((2, 13), np.float32), "indices": np.zeros((2, 25), np.int32)}
    with pytest.raises(HarnessError, match=r"ids \(2, 25\).*\(rows, 26\)"):
        collate([samples[0], bad])


def test_collate_of_packed_samples_equals_collate_of_their_arrays() -> None:
    """The SUT's samples (views of the loaded set's packed rows, with the worker's scratch) give
    the batch a list of the same arrays gives, across blocks of the transpose and batch after
    batch in the same buffers."""
    rng = np.random.default_rng(2)
    loaded = [
        {"dense_x": rng.random((n, 13), dtype=np.float32), "indices": rng.integers(0, 1 << 30, (n, 26), dtype=np.int32)}
        for n in rng.integers(1, 3000, 12).tolist()
    ]
    packed = {k: Packed.of([s[k] for s in loaded]) for k in loaded[0]}
    scratch: dict[str, np.ndarray] = {}
    for at in (np.array([3, 0, 3, 11, 7]), np.array([5]), np.arange(12)[::-1]):
        views = [{k: p.sample(int(i)) for k, p in packed.items()} for i in at]
        got = {k: v.copy() for k, v in collate(SampleList(views, packed, at, scratch)).items()}
        want = collate([loaded[i] for i in at])
        assert sum(len(loaded[i]["dense_x"]) for i in at) > 4096 or len(at) == 1
        assert all(np.array_equal(got[k], want[k]) for k in want)
