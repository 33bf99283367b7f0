"""The pytorch backend's GPU path (fused convolutions, CUDA graphs, samples resident on the GPU,
several instances on one GPU): runs where torch sees a CUDA GPU, is skipped (with the reason)
elsewhere. CI has no GPU: these ran on the lent H200 (see BENCHMARKS.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from harness_support import SAMPLES, answers, run_direct
from mlperf_harness import steps
from mlperf_harness.backends import get_backend
from mlperf_harness.config import build_config


def _cuda() -> None:
    try:
        import onnx2torch  # noqa: F401
        import torch
    except ImportError as exc:
        pytest.skip(f"torch and onnx2torch needed: {exc}")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")


GPU = {"system": {"gpuProduct": "NVIDIA-H200", "gpuCount": 1}, "backend": "pytorch"}


def load(ws: Any, precision: str, output: str = "ArgMax:0") -> Any:
    b = get_backend("pytorch")
    b.load(ws.bench.model_file(ws.model_dir), 8, precision, outputs=[output])
    return b


def images(ws: Any) -> np.ndarray:
    [data] = ws.samples().fixed.values()
    return np.asarray(data)


def test_fused_fp16_matches_fp32_reference(workspace: Any) -> None:
    _cuda()
    ws = workspace(**GPU, precision="fp32")
    data = {"input_tensor:0": images(ws)[:8]}
    ref, fast = load(ws, "fp32", "softmax_tensor:0"), load(ws, "fp16", "softmax_tensor:0")
    # Every conv + ReLU and conv + add + ReLU of ResNet-50, the 4 projection shortcuts' biases
    # folded into them, the stem padded to 4 channels, the max-pool compiled.
    assert (fast.fused, fast.folded, fast.pools, fast._channels) == (49, 4, 1, 4)
    want = ref.predict(data)["softmax_tensor:0"].astype(np.float64)
    got = fast.predict(data)["softmax_tensor:0"].astype(np.float64)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2


def test_resident_rows_answer_as_host_batches(workspace: Any) -> None:
    _cuda()
    ws = workspace(**GPU, precision="fp16")
    data = images(ws)
    host, resident = load(ws, "fp16"), load(ws, "fp16")
    assert resident.reserve_samples(len(data)) and resident.resident
    resident.stage_samples({"input_tensor:0": data})
    resident.warmup({})
    rows = np.array([5, 3, 30, 0, 7])  # a partial batch: padded to a bucket
    want = host.predict({"input_tensor:0": data[rows]})["ArgMax:0"]
    assert np.array_equal(resident.predict_rows(rows)["ArgMax:0"], want)


def test_two_fp16_instances_sharing_the_stream_answer_as_one(workspace: Any) -> None:
    """Instances on one GPU replay on its one stream, each waiting on its own batch's event."""
    _cuda()
    ws = workspace(**GPU, precision="fp16", testModes=["AccuracyOnly"], instancesPerDevice=2)
    made: list[Any] = []

    def factory() -> Any:
        made.append(get_backend("pytorch"))
        return made[-1]

    two = run_direct(ws, "Offline", "AccuracyOnly", factory)
    assert not two.errors and two.completed == SAMPLES and all(n > 0 for n in two.instance_samples)
    assert made[0]._stream is made[1]._stream
    got = answers(two.log_dir)  # before the next run writes the same log directory
    one = run_direct(ws, "Offline", "AccuracyOnly", lambda: get_backend("pytorch"), workers=1)
    want = answers(one.log_dir)
    assert got.keys() == want.keys()
    assert sum(got[i] != want[i] for i in got) <= 1  # batches padded to other buckets: other kernels


def test_two_instances_on_one_gpu_answer_as_onnxruntime(workspace: Any) -> None:
    """fp32 (no TF32) on the GPU, samples resident, two instances on the GPU's stream: every
    sample answered, top-1 as onnxruntime's on the CPU but where the synthetic model's margin is
    below fp32 reordering (cuDNN sums in another order than onnxruntime)."""
    _cuda()
    ws = workspace(**GPU, precision="fp32", testModes=["AccuracyOnly"], instancesPerDevice=2)
    cfg = build_config(ws.spec, "Offline")
    assert cfg.startFromDevice and cfg.workers == 2
    out = run_direct(ws, "Offline", "AccuracyOnly", lambda: get_backend("pytorch"))
    assert not out.errors and out.completed == SAMPLES and out.device.startswith("2 instances on cuda:0")
    assert all(n > 0 for n in out.instance_samples), out.instance_samples
    reference = workspace(testModes=["AccuracyOnly"])
    [result] = steps.run_harness(reference, "Offline", "AccuracyOnly").results

    got, want = answers(out.log_dir), answers(reference.root / result.logDir)
    assert got.keys() == want.keys()
    differ = {i: (got[i], want[i]) for i in got if got[i] != want[i]}
    assert len(differ) <= 1, differ
