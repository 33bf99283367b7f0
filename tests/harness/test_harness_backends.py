"""Backends behind one interface; the GPU ones skip here with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlperf_harness.backends import BACKENDS, backend_class, get_backend
from mlperf_harness.backends.null import NullBackend
from mlperf_harness.benchmarks import get_benchmark
from mlperf_harness.errors import HarnessError
from mlperf_harness.samples import SampleStore


def test_registry_knows_every_backend() -> None:
    assert set(BACKENDS) == {"onnxruntime", "pytorch", "tensorrt", "null"}
    with pytest.raises(KeyError, match="unknown backend"):
        get_backend("tvm")


def test_null_backend_answers_right_shape_without_copying() -> None:
    b = NullBackend(get_benchmark("resnet50").outputs)
    b.load(Path("/dev/null"), 64, "fp32")
    out = b.predict({"": np.empty((10, 0), dtype=np.float32)})["ArgMax:0"]
    assert out.shape == (10,) and out.dtype == np.int64 and not b.consumes_input


def test_onnxruntime_backend_runs_the_model(workdir: Path) -> None:
    model = next((workdir / "cache" / "model").glob("*/resnet50_v1.onnx"))
    b = get_backend("onnxruntime")
    b.load(model, 2, "fp32", outputs=["ArgMax:0"])
    (inp,), (out_spec,) = b.input_specs, b.output_specs
    assert inp.shape == (3, 224, 224) and out_spec.dtype == "int64"
    out = b.predict({inp.name: np.zeros((2, 3, 224, 224), dtype=np.float32)})["ArgMax:0"]
    assert out.shape == (2,) and b.device() == "cpu"


def test_tensorrt_backend() -> None:
    ok, why = backend_class("tensorrt").available()
    if not ok:
        pytest.skip(f"tensorrt: {why}")
    assert backend_class("tensorrt").version() != "unavailable"


def test_pytorch_backend_runs_the_same_onnx_on_cpu(workdir: Path) -> None:
    ok, why = backend_class("pytorch").available()
    if not ok:
        pytest.skip(f"pytorch: {why}")
    model = next((workdir / "cache" / "model").glob("*/resnet50_v1.onnx"))
    b = get_backend("pytorch")
    b.load(model, 2, "fp32", outputs=["ArgMax:0"])
    store = SampleStore(next((workdir / "cache" / "preprocessed").glob("*/samples.json")).parent)
    x = {name: a[:2] for name, a in store.fixed.items()}  # well-separated logits
    ort = get_backend("onnxruntime")
    ort.load(model, 2, "fp32", outputs=["ArgMax:0"])
    assert np.array_equal(b.predict(x)["ArgMax:0"], ort.predict(x)["ArgMax:0"])


def test_pytorch_rewrites_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in MLPERF_TORCH_REWRITES is an error naming it, not a silently slower run."""
    monkeypatch.setenv("MLPERF_TORCH_REWRITES", "fuse,pol")
    with pytest.raises(HarnessError, match="MLPERF_TORCH_REWRITES: pol unknown"):
        get_backend("pytorch")
    monkeypatch.setenv("MLPERF_TORCH_REWRITES", "none")
    assert get_backend("pytorch").rewrites == set()
    monkeypatch.delenv("MLPERF_TORCH_REWRITES")
    assert get_backend("pytorch").rewrites == {"fuse", "fold", "pad", "pool"}


@pytest.mark.gpu
def test_cuda_buffers_round_trip() -> None:
    """The cuda-python part of the TensorRT backend, on any NVIDIA GPU (no TensorRT needed)."""
    try:
        from mlperf_harness.backends import cuda_buffers

        cuda_buffers.device_name(0)
    except Exception as exc:  # no cuda-python or no GPU here
        pytest.skip(f"cuda-python with an NVIDIA GPU needed: {type(exc).__name__}: {exc}")
    cuda_buffers.self_test()
