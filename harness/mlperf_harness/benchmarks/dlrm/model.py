"""DLRM as MLPerf v1.0 runs it (tb00_40M), with random weights, as an ONNX graph.

Architecture (the reference's ``--max-ind-range=40000000`` configuration): bottom MLP
13-512-256-128 with ReLU; 26 embedding tables of dimension 128; dot interaction of the 27 vectors
(the bottom output and one embedding per table), keeping the 351 pairs below the diagonal, joined
to the bottom output (479 values); top MLP 479-1024-1024-512-256-1 with ReLU and a final sigmoid.

Interface of the reference's ONNX export (dlrm_s_pytorch.py, ``--save-onnx``, tensor inputs):
``dense_x`` float32 (N, 13), ``offsets`` int64 (26, N), ``indices`` int64 (26, N), output ``pred``
float32 (N, 1). Each bag of the reference's EmbeddingBag holds one id (every Criteo feature is
one-hot; the harness, as the reference's loader, passes offsets 0..N-1), so a bag's embedding is
the row of its one id: the graph gathers ``indices[t, offsets[t, r]]`` and looks it up. Longer
bags would be summed by the real model; this graph would take their first id only.

The tables are float16 (``TABLE_DTYPE``; the graph casts each looked-up row to float32, so the rest
of the model computes in float32 as the reference's does): half the reference's float32 bytes.
``size="full"``: the real row counts (187,767,399 rows, 44.8 GiB of float16; 89.5 GiB in float32,
which fits neither the GPU machine's 64 GiB disk nor twice in its host memory), written as one
external-data file at aligned offsets (memory-mappable by onnxruntime and the pytorch backend),
chunk by chunk in one thread a core, never whole in memory. Measured here (2026-12-04, two busy
cores, a disk writing 285 MB/s with fsync): 2.1 GiB of real-size tables in 21 s, 5.9 CPU-seconds
a GiB (3.4 generating, 2.5 the kernel's writes), peak RSS 240 MB. The 44.8 GiB then take 270
CPU-seconds, 17 s of 16 cores: the disk sets the time, 2.7 min at 285 MB/s, 45 s at 1 GiB/s.
``size="small"``: the same graph with tables of at most 1,000 rows, inline, for CI. A labeller's
model (``keep``) holds only the rows its data looks up (``kept_rows``): the same predictions for
those rows without a second full copy of the tables. Every size is SYNTHETIC (random weights).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import HarnessError
from ...fsutil import temp_path_for
from .criteo import DENSE, SPARSE, synthetic_rows, transform

DENSE_INPUT = "dense_x"
OFFSETS = "offsets"
INDICES = "indices"
OUTPUT = "pred"
EMB_DIM = 128
BOTTOM = (DENSE, 512, 256, EMB_DIM)
FEATURES = SPARSE + 1  # the bottom output and one embedding per table
PAIRS = FEATURES * (FEATURES - 1) // 2  # 351
TOP = (EMB_DIM + PAIRS, 1024, 1024, 512, 256, 1)  # 479 in
# Rows per table of tb00_40M: the day_fea_count.npz counts, cut at --max-ind-range 40M.
TABLE_SIZES_FULL = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)  # fmt: skip
SMALL_ROWS = 1000
TABLE_DTYPE = np.float16  # 44.8 GiB at full size: fits the GPU machine's 64 GiB disk and an H200 beside the rest
ROW_BYTES = EMB_DIM * np.dtype(TABLE_DTYPE).itemsize
EMB_RANGE = 0.5  # uniform(-0.5, 0.5): large enough that the ids move the prediction of a random model
LOGIT_STD = 2.0  # the last layer is scaled so that logits spread this much on synthetic rows
CHUNK_ROWS = 1 << 16  # table rows generated (and seeded) per chunk: 16 MiB of float16
ALIGN = 1 << 16  # tables start at aligned offsets of the data file, so they can be memory-mapped
CALIBRATION_ROWS = 4096
META_SIZES = "tableSizes"  # metadata: the rows per table of the model a labeller's tables are taken from

Layer = tuple[np.ndarray, np.ndarray]
Lookup = Callable[[int, np.ndarray], np.ndarray]  # (table, ids) -> rows
Chunk = Callable[[int, int], np.ndarray]  # (table, chunk) -> that chunk's rows of the written table


CAPS = {"full": None, "small": SMALL_ROWS}


def table_sizes(size: str) -> tuple[int, ...]:
    if size not in CAPS:
        raise HarnessError(f"dlrm: model size must be one of {', '.join(CAPS)}, got {size!r}")
    cap = CAPS[size]
    return tuple(n if cap is None else min(n, cap) for n in TABLE_SIZES_FULL)


def interaction_pairs() -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with j < i, row by row: the order DLRM flattens the lower triangle in."""
    i, j = np.tril_indices(FEATURES, -1)
    return i, j


def _layer(rng: np.random.Generator, m: int, n: int) -> Layer:
    # DLRM's initialisation: W ~ N(0, sqrt(2 / (m + n))), b ~ N(0, sqrt(1 / n)).
    w = rng.normal(0.0, np.sqrt(2.0 / (m + n)), (m, n)).astype(np.float32)
    b = rng.normal(0.0, np.sqrt(1.0 / n), n).astype(np.float32)
    return w, b


def _table_chunk(seed: int, table: int, chunk: int, rows: int) -> np.ndarray:
    n = min(CHUNK_ROWS, rows - chunk * CHUNK_ROWS)
    rng = np.random.default_rng([seed, 1 + table, chunk])
    x = rng.random((n, EMB_DIM), dtype=np.float32)
    x *= np.float32(2 * EMB_RANGE)
    x -= np.float32(EMB_RANGE)
    return x.astype(TABLE_DTYPE)


def _picked_rows(seed: int, table: int, rows: int, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (sorted) of a table of ``rows`` rows, generating only the chunks they fall in."""
    out = np.empty((len(ids), EMB_DIM), dtype=TABLE_DTYPE)
    chunk = ids // CHUNK_ROWS
    for c in np.unique(chunk):
        at = np.flatnonzero(chunk == c)
        out[at] = _table_chunk(seed, table, int(c), rows)[ids[at] - c * CHUNK_ROWS]
    return out


def _chunks(rows: int) -> range:
    return range((rows + CHUNK_ROWS - 1) // CHUNK_ROWS)


def _write_tables(data_path: Path, sizes: Sequence[int], chunk: Chunk) -> list[int]:
    """Write every table into one file at aligned offsets, chunk by chunk, in threads (numpy's
    generators and casts release the GIL): one thread a core, a chunk at a time each."""
    offsets, end = [], 0
    for rows in sizes:
        offsets.append(end)
        end = (end + rows * ROW_BYTES + ALIGN - 1) // ALIGN * ALIGN
    with data_path.open("wb") as fh:
        fh.truncate(end)
        fd = fh.fileno()

        def write(task: tuple[int, int]) -> None:
            t, c = task
            view = chunk(t, c).data.cast("B")
            pos = offsets[t] + c * CHUNK_ROWS * ROW_BYTES
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n

        tasks = [(t, c) for t, rows in enumerate(sizes) for c in _chunks(rows)]
        # The cores this process may use (a pod's cpuset), not the node's: ~48 MiB of buffers a thread.
        with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
            for _ in pool.map(write, tasks):
                pass
        os.fsync(fd)
    return offsets


def _external_tensor(name: str, rows: int, location: str, offset: int) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(TABLE_DTYPE))
    t.dims.extend([rows, EMB_DIM])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(rows * ROW_BYTES))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def hidden(
    bottom: Sequence[Layer], top: Sequence[Layer], lookup: Lookup, dense: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    """The forward pass in numpy through ``top`` (ReLU after each layer): used to scale the last
    layer on calibration rows, before the graph exists."""
    x = dense
    for w, b in bottom:
        x = np.maximum(x @ w + b, 0)
    t = np.stack([x] + [lookup(k, ids[:, k]) for k in range(SPARSE)], axis=1)
    i, j = interaction_pairs()
    h = np.concatenate([x, (t @ t.transpose(0, 2, 1))[:, i, j]], axis=1)
    for w, b in top:
        h = np.maximum(h @ w + b, 0)
    return np.asarray(h, dtype=np.float32)


def _graph(bottom: Sequence[Layer], top: Sequence[Layer], tables: Sequence[TensorProto]) -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = list(tables)

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def mlp(x: str, layers: Sequence[Layer], prefix: str, last_sigmoid: bool) -> str:
        for k, (w, b) in enumerate(layers):
            wn, bn = const(f"{prefix}.{k}.weight", w), const(f"{prefix}.{k}.bias", b)
            y = f"{prefix}.{k}.gemm"
            nodes.append(helper.make_node("Gemm", [x, wn, bn], [y]))
            act = "Sigmoid" if last_sigmoid and k == len(layers) - 1 else "Relu"
            x = OUTPUT if act == "Sigmoid" else f"{prefix}.{k}.relu"
            nodes.append(helper.make_node(act, [y], [x]))
        return x

    x = mlp(DENSE_INPUT, bottom, "bot_l", last_sigmoid=False)
    # One id per bag: the id at each bag's offset.
    nodes.append(helper.make_node("GatherElements", [INDICES, OFFSETS], ["bag_ids"], axis=1))
    vectors = [x]
    for t in range(SPARSE):
        nodes.append(helper.make_node("Gather", ["bag_ids", const(f"table_{t}", np.array(t))], [f"ids_{t}"], axis=0))
        nodes.append(helper.make_node("Gather", [f"emb_{t}", f"ids_{t}"], [f"row_{t}"], axis=0))
        nodes.append(helper.make_node("Cast", [f"row_{t}"], [f"ly_{t}"], to=TensorProto.FLOAT))
        vectors.append(f"ly_{t}")
    i, j = interaction_pairs()
    nodes += [
        helper.make_node("Concat", vectors, ["features_flat"], axis=1),
        helper.make_node(
            "Reshape", ["features_flat", const("features_shape", np.array([-1, FEATURES, EMB_DIM]))], ["features"]
        ),
        helper.make_node("Transpose", ["features"], ["features_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["features", "features_t"], ["dots"]),
        helper.make_node("Reshape", ["dots", const("dots_shape", np.array([-1, FEATURES * FEATURES]))], ["dots_flat"]),
        helper.make_node(
            "Gather", ["dots_flat", const("pairs", (i * FEATURES + j).astype(np.int64))], ["pairs_dot"], axis=1
        ),
        helper.make_node("Concat", [x, "pairs_dot"], ["interaction"], axis=1),
    ]
    mlp("interaction", top, "top_l", last_sigmoid=True)
    graph = helper.make_graph(
        nodes,
        "dlrm_tb00_40M_synthetic",
        [
            helper.make_tensor_value_info(DENSE_INPUT, TensorProto.FLOAT, ["batch_size", DENSE]),
            helper.make_tensor_value_info(OFFSETS, TensorProto.INT64, [SPARSE, "batch_size"]),
            helper.make_tensor_value_info(INDICES, TensorProto.INT64, [SPARSE, "batch_size"]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch_size", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mlperf-operator")
    model.ir_version = 7  # opset 13's IR version: older onnxruntimes refuse newer ones
    return model


def build_model(
    path: Path,
    seed: int,
    size: str = "small",
    *,
    external: bool | None = None,
    sizes: Sequence[int] | None = None,
    keep: Sequence[np.ndarray] | None = None,
) -> Path:
    """Write the synthetic DLRM for ``seed`` to ``path``. Tables go to ``<path>.data`` (external
    data, memory-mappable) when ``external`` (the default but for "small"), inline otherwise.
    ``sizes``: rows per table instead of ``size``'s (tests: a model of a few hundred MB). ``keep``:
    a labeller's model, its table ``t`` holding only rows ``keep[t]`` (sorted, from ``kept_rows``)
    of the model's, in that order: the model's predictions once ids are mapped to their positions."""
    sizes = tuple(sizes) if sizes is not None else table_sizes(size)
    if len(sizes) != SPARSE:
        raise HarnessError(f"dlrm: sizes must give rows for {SPARSE} tables, got {len(sizes)}")
    external = size != "small" if external is None else external
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep is None:
        written = sizes

        def chunk(t: int, c: int) -> np.ndarray:
            return _table_chunk(seed, t, c, sizes[t])

        def position(t: int, ids: np.ndarray) -> np.ndarray:
            return ids
    else:
        needed = kept_rows(seed, sizes, [np.zeros(0, np.int64)] * SPARSE)
        if any(not np.isin(n, k).all() for n, k in zip(needed, keep, strict=True)):
            raise HarnessError("dlrm: keep must hold the calibration rows too; make it with kept_rows")
        written = tuple(len(k) for k in keep)

        def chunk(t: int, c: int) -> np.ndarray:
            return _picked_rows(seed, t, sizes[t], keep[t][c * CHUNK_ROWS : (c + 1) * CHUNK_ROWS])

        def position(t: int, ids: np.ndarray) -> np.ndarray:
            return np.searchsorted(keep[t], ids)

    if not external:
        tables = [np.concatenate([chunk(t, c) for c in _chunks(n)]) for t, n in enumerate(written)]
        protos = [numpy_helper.from_array(tab, f"emb_{t}") for t, tab in enumerate(tables)]
        _save(path, seed, sizes, lambda t, ids: tables[t][position(t, ids)], protos)
        return path
    data_path = path.with_name(path.name + ".data")
    with temp_path_for(data_path) as tmp_data:
        offsets = _write_tables(tmp_data, written, chunk)

        def lookup(t: int, ids: np.ndarray) -> np.ndarray:
            # Row by row with pread: a memory map would fault in (and count) whole runs of pages.
            with tmp_data.open("rb") as fh:
                at = [offsets[t] + int(i) * ROW_BYTES for i in position(t, ids)]
                rows = [os.pread(fh.fileno(), ROW_BYTES, pos) for pos in at]
            return np.frombuffer(b"".join(rows), dtype=TABLE_DTYPE).reshape(len(ids), EMB_DIM)

        protos = [
            _external_tensor(f"emb_{t}", rows, data_path.name, off)
            for t, (off, rows) in enumerate(zip(offsets, written, strict=True))
        ]
        _save(path, seed, sizes, lookup, protos)
    return path


def _calibration(seed: int, sizes: Sequence[int]) -> dict[str, np.ndarray]:
    """The rows the last layer is scaled on (``_save``)."""
    return transform(synthetic_rows(seed ^ 0xCA11, 0, CALIBRATION_ROWS, sizes))


def kept_rows(seed: int, sizes: Sequence[int], used: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What a labeller's model (``build_model(keep=...)``) of ``seed`` and ``sizes`` holds per
    table: the rows its data uses (``used[t]``) and the rows the model is calibrated on, sorted."""
    ids = _calibration(seed, sizes)["indices"]
    return [np.union1d(u.astype(np.int64), ids[:, t]) for t, u in enumerate(used)]


def _save(path: Path, seed: int, sizes: Sequence[int], lookup: Lookup, protos: list[TensorProto]) -> None:
    rng = np.random.default_rng([seed, 0])
    bottom = [_layer(rng, m, n) for m, n in itertools.pairwise(BOTTOM)]
    top = [_layer(rng, m, n) for m, n in itertools.pairwise(TOP)]
    # Scale the last layer so that logits spread LOGIT_STD around 0 on synthetic rows: predictions
    # then span (0, 1) and split into clicks and non-clicks at 0.5.
    rows = _calibration(seed, sizes)
    h = hidden(bottom, top[:-1], lambda t, ids: lookup(t, ids).astype(np.float32), rows["dense_x"], rows["indices"])
    w, _ = top[-1]
    z = h @ w
    scale = np.float32(LOGIT_STD / max(float(z.std()), 1e-6))
    top[-1] = ((w * scale).astype(np.float32), np.array([-np.median(z * scale)], dtype=np.float32))
    model = _graph(bottom, top, protos)
    kept = sum(int(t.dims[0]) for t in protos)
    of = "" if kept == sum(sizes) else f" of {sum(sizes):,}"
    model.doc_string = (
        f"SYNTHETIC: random-weight DLRM (tb00_40M architecture, {kept:,} table rows{of}, float16 tables), "
        "not a trained model"
    )
    helper.set_model_props(model, {META_SIZES: json.dumps(list(sizes))})
    with temp_path_for(path) as tmp:
        onnx.save(model, str(tmp))


def model_table_sizes(path: Path) -> tuple[int, ...]:
    """Rows per embedding table of a DLRM ONNX file (read without loading external data)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's and onnx's errors have no common base
        raise HarnessError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:160]})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if META_SIZES in meta:  # a labeller's model: the sizes of the tables its rows come from
        return tuple(int(n) for n in json.loads(meta[META_SIZES]))
    dims = {init.name: tuple(init.dims) for init in model.graph.initializer}
    try:
        return tuple(int(dims[f"emb_{t}"][0]) for t in range(SPARSE))
    except KeyError:
        raise HarnessError(f"{path}: no embedding tables emb_0..emb_{SPARSE - 1} (not the synthetic DLRM)") from None
