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
