"""The pytorch backend on a model with external data (dlrm's tables, 225 MiB of float16 here): the
tables are memory-mapped, not read into memory (onnx2torch alone held two copies), and moved to the
device one at a time, each mapping released before the next; the answers are onnxruntime's.

Peak resident memory is measured in a subprocess (``ru_maxrss``: the most the process held at
once, mapped file pages included), against the tables' bytes T. Measured on the CPU (2026-12-04):
the load added 0.30 T (the MLPs, the converted graph, imports; the tables were not touched), 2.3 T
before the tables were mapped; copying every buffer to fresh memory, as a move to a GPU does,
brought it to 1.24 to 1.28 T (the copy plus the largest table's mapped pages). The bounds, 0.6 T and
1.6 T, sit between those and two copies. Needs torch (skipped without it); the GPU test runs on a
GPU only (untested here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlperf_harness.backends import backend_class, get_backend
from mlperf_harness.benchmarks.dlrm import batching, criteo, model
from mlperf_harness.errors import HarnessError

OK, WHY = backend_class("pytorch").available()
pytestmark = pytest.mark.skipif(not OK, reason=f"pytorch: {WHY} (CI has no torch)")

SIZES = [min(n, 100_000) for n in model.TABLE_SIZES_FULL]  # 921,165 rows: 225 MiB of float16
TABLE_BYTES = sum(SIZES) * model.ROW_BYTES

# Loads the model on the given device; prints the peak RSS before and after the load, after every
# buffer is copied to fresh memory one at a time (what a move to a GPU does), and the backend's figures.
PROBE = """
import json, resource, sys
from pathlib import Path
from mlperf_harness.backends.torch_graph import TorchGraphBackend

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

if sys.argv[2] != "fp32":  # a GPU: its context and libraries first, so that the figures count the load only
    import torch
    torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda")
before = peak()
backend = TorchGraphBackend()
backend.load(Path(sys.argv[1]), 64, sys.argv[2], outputs=["pred"])
loaded = peak()
backend._model._apply(lambda t: t.clone())
print(json.dumps({"before": before, "loaded": loaded, "copied": peak(), "memory": backend.memory}))
"""


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.build_model(tmp_path_factory.mktemp("dlrm-ext") / "dlrm.onnx", 5, sizes=SIZES, external=True)


def _feeds(rows: int = 300) -> dict[str, np.ndarray]:
    return batching.collate([criteo.transform(criteo.synthetic_rows(8, 0, rows, SIZES))])


def _probe(path: Path, precision: str = "fp32") -> dict[str, object]:
    # Imports first (torch, onnx2torch) so that the figures count the load only.
    code = "import torch, onnx2torch, onnxruntime\n" + PROBE
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), precision], capture_output=True, text=True, env=os.environ, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_external_tables_answer_as_onnxruntime(tables: Path) -> None:
    from mlperf_harness.backends.torch_graph import TorchGraphBackend

    ort, pt = get_backend("onnxruntime"), TorchGraphBackend()  # the general path ("pytorch" picks it for dlrm)
    ort.load(tables, 64, "fp32")
    pt.load(tables, 64, "fp32", outputs=["pred"])
    feeds = _feeds()
    np.testing.assert_allclose(pt.predict(feeds)["pred"], ort.predict(feeds)["pred"], rtol=1e-5, atol=1e-6)
    assert {"hostPeakRssBytes", "hostRssBytes"} <= set(pt.memory)


def test_loading_holds_no_copy_of_the_tables(tables: Path) -> None:
    got = _probe(tables)
    before, loaded, copied = (int(got[k]) for k in ("before", "loaded", "copied"))  # type: ignore[call-overload]
    assert loaded - before < 0.6 * TABLE_BYTES, f"the load held {(loaded - before) / TABLE_BYTES:.2f} x the tables"
    assert copied - before < 1.6 * TABLE_BYTES, f"the copy held {(copied - before) / TABLE_BYTES:.2f} x the tables"
    assert got["memory"]["hostPeakRssBytes"] == loaded  # type: ignore[index]


def test_a_missing_data_file_is_named(tables: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(tables.read_bytes())  # its dlrm.onnx.data is not beside it
    with pytest.raises(HarnessError, match=r"external data file dlrm\.onnx\.data of emb_0 is missing"):
        get_backend("pytorch").load(lone, 64, "fp32", outputs=["pred"])


@pytest.mark.skipif(not OK or not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_tables_go_to_the_gpu_one_at_a_time(tmp_path: Path) -> None:
    """On a GPU (untested: none here): tables of 1.9 GB on the device in float16, the host's peak
    under 0.6 of them (the copy to the device goes table by table from the mapped file)."""
    sizes = [min(n, 1_000_000) for n in model.TABLE_SIZES_FULL]
    table_bytes = sum(sizes) * model.ROW_BYTES
    got = _probe(model.build_model(tmp_path / "dlrm.onnx", 5, sizes=sizes, external=True), "fp16")
    before, loaded = int(got["before"]), int(got["loaded"])  # type: ignore[call-overload]
    memory: dict[str, int] = got["memory"]  # type: ignore[assignment]
    assert table_bytes <= memory["deviceAllocatedBytes"] < table_bytes + 2**27
    assert memory["devicePeakBytes"] < table_bytes + 2**28
    assert loaded - before < 0.6 * table_bytes, f"the load held {(loaded - before) / table_bytes:.2f} x the tables"


def test_a_table_past_2_31_elements_answers_on_the_gpu(tmp_path: Path) -> None:
    """On a GPU (untested: none here): one table of 20,000,000 rows (2.56 G elements, past 2^31,
    as the full model's 40M-row ones are; 4M-row tables never were) answers as onnxruntime on the
    CPU, its last rows looked up."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from mlperf_harness.backends.torch_graph import TorchGraphBackend

    sizes = [*SIZES[:-1], 20_000_000]
    path = model.build_model(tmp_path / "dlrm.onnx", 5, sizes=sizes, external=True)
    feeds = batching.collate([criteo.transform(criteo.synthetic_rows(8, 0, 300, sizes))])
    feeds[batching.INDICES][-1] = np.arange(sizes[-1] - 300, sizes[-1])  # the last table's far end
    ort, pt = get_backend("onnxruntime"), TorchGraphBackend()
    ort.load(path, 512, "fp32")
    pt.load(path, 512, "fp32", outputs=["pred"])
    np.testing.assert_allclose(pt.predict(feeds)["pred"], ort.predict(feeds)["pred"], rtol=1e-4, atol=1e-5)


def test_any_graph_with_external_weights_answers_as_onnxruntime(tmp_path: Path) -> None:
    """Not dlrm only: a Gemm's external weights (copied into its Linear) and an external float16
    table (mapped); a bfloat16 initializer, which numpy cannot map, is read in (as onnx reads it;
    onnx2torch itself has no bfloat16 tensors, so it is not in the graph run)."""
    import onnx
    from mlperf_harness.backends.torch_external import map_external
    from mlperf_harness.backends.torch_graph import TorchGraphBackend
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    bf16 = (np.array([0.5, -1.0, 2.0], np.float32).view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 3)).astype(np.float16), "table"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["y"]),
        helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
        helper.make_node("Cast", ["rows"], ["rows32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["y", "rows32"], ["out"]),
    ]
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
    ]
    out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3])]
    graphs = {
        "g.onnx": helper.make_graph(nodes, "g", ins, out, inits),
        "bf16.onnx": helper.make_graph(
            [helper.make_node("Cast", ["shift"], ["out"], to=TensorProto.FLOAT)],
            "bf16",
            [],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3])],
            [helper.make_tensor("shift", TensorProto.BFLOAT16, [3], bf16.tobytes(), raw=True)],
        ),
    }
    for name, graph in graphs.items():
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        proto.ir_version = 7
        onnx.save(proto, str(tmp_path / name), save_as_external_data=True, location=f"{name}.data", size_threshold=0)
    path = tmp_path / "g.onnx"
    mapped = map_external(onnx.load(str(path), load_external_data=False), path).graph.initializer
    assert all(Path(dict((e.key, e.value) for e in t.external_data)["location"]).is_absolute() for t in mapped)
    bf16_path = tmp_path / "bf16.onnx"
    [shift] = map_external(onnx.load(str(bf16_path), load_external_data=False), bf16_path).graph.initializer
    assert shift.data_location == TensorProto.DEFAULT and shift.raw_data == bf16.tobytes()

    ort, pt = get_backend("onnxruntime"), TorchGraphBackend()
    ort.load(path, 4, "fp32")
    pt.load(path, 4, "fp32", outputs=["out"])
    feeds = {"x": rng.standard_normal((5, 4)).astype(np.float32), "ids": np.array([0, 9, 3, 3, 1])}
    np.testing.assert_allclose(pt.predict(feeds)["out"], ort.predict(feeds)["out"], rtol=1e-5, atol=1e-5)
