"""The pytorch backend's GPU path (fused convolutions, CUDA graphs, samples resident on the GPU,
several instances on one GPU; fp8 on sm_89+): runs where torch sees a CUDA GPU, is skipped (with
the reason) elsewhere. CI has no GPU: these ran on the lent H200 and H100 (see BENCHMARKS.md); the
fused FP8 kernel's test failed there before its comparison (the plan lookup, fixed since); on an H200
(2026-12-05) its comparison ran, and its E4M3 bounds, tighter than its own fp16 tolerance allows, were
widened to match that tolerance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness_support import SAMPLES, answers, pooled_features, run_direct
from mlperf_harness import steps
from mlperf_harness.backends import get_backend
from mlperf_harness.config import build_config
from mlperf_harness.errors import HarnessError


def _cuda() -> None:
    try:
        import onnx2torch  # noqa: F401
        import torch
    except ImportError as exc:
        pytest.skip(f"torch and onnx2torch needed: {exc}")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")


GPU = {"system": {"gpuProduct": "NVIDIA-H200", "gpuCount": 1}, "backend": "pytorch"}


def load(ws: Any, precision: str, output: str = "ArgMax:0", rewrites: set[str] | None = None) -> Any:
    b = get_backend("pytorch")
    if rewrites is not None:
        b.rewrites = rewrites  # type: ignore[attr-defined]
    b.load(ws.bench.model_file(ws.model_dir), 8, precision, outputs=[output])
    return b


def images(ws: Any) -> np.ndarray:
    [data] = ws.samples().fixed.values()
    return np.asarray(data)


def _softmax(backend: Any, x: np.ndarray) -> np.ndarray:
    chunks = [backend.predict({"input_tensor:0": x[i : i + 8]})["softmax_tensor:0"] for i in range(0, len(x), 8)]
    return np.concatenate(chunks).astype(np.float64)


def _errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Each sample's relative error against the reference."""
    return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


def _drop_last_residual(backend: Any) -> None:
    """A wrong fusion: the last block's conv + add + ReLU with its residual left out."""
    last = [m for m in backend._model.modules() if getattr(m, "add", False)][-1]
    keep = last.forward
    last.forward = lambda x, z=None: keep(x, z * 0)


def test_fused_fp16_matches_fp32_reference(workspace: Any) -> None:
    """The rewrites are exact, and fp16 through them is as good as plain fp16 on the same GPU.

    The synthetic model's softmax is ill-conditioned in fp16 (its classifier is centred on the mean
    feature, so fp16's rounding of large features moves the calibrated logits): a fixed bound on
    fp16's error failed on a fresh H200. So the rewrites are checked in fp32, where fp32 rounding
    is the only difference and a dropped residual stands out, and fused fp16 is judged against
    plain fp16's error distribution measured in the same run. On an H200 (2026-12-04): fp32
    rewrites max error 2.5e-5, a dropped residual at least 0.30; fp16 plain and fused both a
    median error of 1.2 and 11 of 32 top-1 agreements on this fixture's images (98.7 % on
    gpu_h200.py's 1,024: the fewer the calibration images, the smaller the logits' margins)."""
    _cuda()
    from mlperf_harness.backends.torch_backend import fuse_conv_activations

    ws = workspace(**GPU, precision="fp32")
    data = images(ws)
    want = _softmax(load(ws, "fp32", "softmax_tensor:0"), data)

    fused32, wrong32 = load(ws, "fp32", "softmax_tensor:0"), load(ws, "fp32", "softmax_tensor:0")
    assert fuse_conv_activations(fused32._model) == fuse_conv_activations(wrong32._model) == (49, 4)
    _drop_last_residual(wrong32)  # before its first batch captures a CUDA graph
    exact, broken = (_errors(_softmax(b, data), want) for b in (fused32, wrong32))
    print(f"fp32 rewrites: max err {exact.max():.2e}; with a dropped residual: min err {broken.min():.2e}")
    assert exact.max() < 1e-3 < 1e-1 < broken.min()

    fast = load(ws, "fp16", "softmax_tensor:0")
    # Every conv + ReLU and conv + add + ReLU of ResNet-50, the 4 projection shortcuts' biases
    # folded into them, the stem padded to 4 channels, the max-pool compiled.
    assert (fast.fused, fast.folded, fast.pools, fast._channels) == (49, 4, 1, 4)
    plain_out = _softmax(load(ws, "fp16", "softmax_tensor:0", rewrites=set()), data)
    fast_out = _softmax(fast, data)
    plain, fused = _errors(plain_out, want), _errors(fast_out, want)
    top1 = want.argmax(axis=1)
    agree_plain, agree_fused = (int((out.argmax(axis=1) == top1).sum()) for out in (plain_out, fast_out))
    print(
        f"fp16 vs fp32 over {len(data)} samples: plain median err {np.median(plain):.2e}, top-1 {agree_plain}; "
        f"fused median err {np.median(fused):.2e}, top-1 {agree_fused}"
    )
    assert np.median(fused) <= 2 * np.median(plain) and agree_fused >= agree_plain - len(data) // 16


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


@pytest.mark.parametrize(
    "m,n,k,z_fp8",
    [(3136 * 8, 64, 64, False), (784 * 8 + 5, 512, 128, False), (49 * 8, 2048, 512, False), (100, 1024, 2048, False),
     (3136 * 8 + 3, 256, 64, True)],
)  # fmt: skip
@pytest.mark.parametrize("options", ["none", "tma,zearly"])
def test_fused_fp8_gemm_equals_cublas_and_the_epilogue(
    monkeypatch: pytest.MonkeyPatch, options: str, m: int, n: int, k: int, z_fp8: bool
) -> None:
    """fp8_gemm's one Triton kernel against torch._scaled_mm (through ``scaled_mm``'s plan) and
    the epilogue in fp32, on ResNet-50's GEMM shapes (batch 8) and ragged ones, the residual in fp16
    or E4M3 with its scale (``z_fp8``, MLPERF_TORCH_FP8_RESIDUAL=fp8): the fp16 output
    within fp16 rounding of the fp32 epilogue, the E4M3 copy equal to torch's rounding of it but
    where the two products round apart (different summation order and accumulation precision):
    at most 1 element in 100, each within one E4M3 step. Read through pointers, or through TMA
    descriptors with the residual read early (MLPERF_TORCH_FP8_KERNEL)."""
    _cuda()
    monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", options)
    import torch
    from mlperf_harness.backends import fp8_gemm, torch_fp8

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9 or later")
    gen = torch.Generator().manual_seed(m + n + k)
    dev = torch.device("cuda")
    a = torch_fp8.quantize(torch.randn(m, k, generator=gen) * 3, 1.0).to(dev)
    b = torch_fp8.quantize(torch.randn(n, k, generator=gen), 1.0).to(dev)
    scale = (torch.rand(n, generator=gen) + 0.5).to(dev)
    bias = torch.randn(n, generator=gen).to(dev, torch.float16)
    z = torch.randn(m, n, generator=gen).to(dev, torch.float16)
    z_scale = torch.tensor([3.0], device=dev) if z_fp8 else None
    if z_scale is not None:
        z = torch_fp8.quantize(z, 1.0)
    q_inv = torch.tensor(0.25, device=dev)
    y, q = fp8_gemm.gemm(a, b, scale, bias, z, relu=True, out_dtype=torch.float16, q_inv=q_inv, z_scale=z_scale)
    torch_fp8.gemm_plan(dev, torch.float32, True)
    residual = z.float() * (1.0 if z_scale is None else z_scale)
    want = torch.relu(torch_fp8.scaled_mm(a, b.t(), scale[None], bias.float(), torch.float32) + residual)
    tol = 2e-3 * float(want.abs().max())
    assert torch.allclose(y.float(), want, rtol=2e-3, atol=tol)
    got, ref = q.float(), torch_fp8.quantize(want, q_inv).float()
    off = got != ref
    # The two products (Triton's and cuBLASLt's fast accumulations) may differ by y's tolerance, which
    # moves a value across an E4M3 rounding boundary (steps of 2^-4 to 2^-3 of it) for at most about
    # 2e-3 / 2^-4 = 3 % of them (an H200 measured 1.5 %, 2026-12-05); each then differs by that
    # tolerance plus the two roundings (a step each, 2^-3 of the value at most, or 2^-9 below 2^-6).
    # A wrong scale or layout moves nearly all, by far more.
    assert float(off.float().mean()) <= 3e-2
    slack = float(q_inv) * (2e-3 * want.abs() + tol)
    assert ((got - ref).abs() <= ref.abs() * 2.0**-2 + 2.0**-8 + slack)[off].all()


@pytest.mark.parametrize(
    "side,c,n,kernel,stride,options",
    [(56, 64, 64, 3, 1, "none"), (56, 128, 128, 3, 2, "none"), (14, 256, 1024, 1, 1, "none"),
     (14, 256, 1024, 1, 1, "tma"), (56, 64, 256, 1, 1, "tma"), (112, 4, 64, 7, 2, "none"),
     (56, 64, 256, 1, 1, "zearly,persist"), (28, 128, 512, 1, 1, "zearly,persist")],
)  # fmt: skip
def test_fused_fp8_conv_is_the_conv_of_its_quantised_tensors(
    monkeypatch: pytest.MonkeyPatch, side: int, c: int, n: int, kernel: int, stride: int, options: str
) -> None:
    """fp8_gemm's implicit-GEMM convolution on the GPU (ResNet-50's 3x3 shapes, strided, and 1x1
    ones, through pointers or TMA, or persistent (several tiles a program); its 7x7 stem over 4
    channels (3 are refused on a GPU: they gave wrong results on an H100), the K steps over the
    window's flattened taps) against torch's fp32 convolution of the same E4M3 values: within
    fp16 rounding of the output (the products are exact in fp32; only the summation order
    differs), padding included. Then the input in fp16
    with ``x_inv``: the kernel's own rounding to E4M3 (the hardware's) gives the output of
    torch's E4M3 copy, to the bit."""
    _cuda()
    monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", options)
    import torch
    from mlperf_harness.backends import fp8_gemm, torch_fp8

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9 or later")
    gen = torch.Generator().manual_seed(side + c + n)
    dev = torch.device("cuda")
    x = torch_fp8.quantize(torch.randn(8, side, side, c, generator=gen) * 3, 1.0).to(dev)
    w = torch_fp8.quantize(torch.randn(n, kernel, kernel, c, generator=gen), 1.0).to(dev)
    scale = (torch.rand(n, generator=gen) + 0.5).to(dev)
    y, _ = fp8_gemm.conv(
        x, w.reshape(n, -1), scale, kernel=(kernel, kernel), stride=(stride, stride),
        padding=(kernel // 2, kernel // 2), out_dtype=torch.float16,
    )  # fmt: skip
    want = (
        torch.nn.functional.conv2d(
            x.float().permute(0, 3, 1, 2), w.float().permute(0, 3, 1, 2), None, stride, kernel // 2
        )
        * scale[None, :, None, None]
    )
    want = want.permute(0, 2, 3, 1).reshape(-1, n)
    assert torch.allclose(y.float(), want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))
    x16 = (torch.randn(8, side * stride, side * stride, c, generator=gen) * 3).to(dev, torch.float16)
    inv = torch.tensor([0.7], device=dev)
    shape = {"kernel": (kernel, kernel), "stride": (stride, stride), "padding": (kernel // 2, kernel // 2)}
    fused, _ = fp8_gemm.conv(x16, w.reshape(n, -1), scale, x_inv=inv, out_dtype=torch.float16, **shape)
    copied, _ = fp8_gemm.conv(torch_fp8.quantize(x16, inv), w.reshape(n, -1), scale, out_dtype=torch.float16, **shape)
    assert torch.equal(fused, copied)


def test_fp8_max_pool_on_the_gpu() -> None:
    """fp8_gemm's max-pool of ResNet-50's stem output (112x112x64 E4M3, negative values too) against
    torch's pool of the same values in fp32: exactly."""
    _cuda()
    import torch
    from mlperf_harness.backends import fp8_gemm, torch_fp8

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9 or later")
    gen = torch.Generator().manual_seed(3)
    q = torch_fp8.quantize(torch.randn(16, 112, 112, 64, generator=gen) * 40, 1.0).cuda()
    got = fp8_gemm.max_pool(q, 3, 2, 1).float()
    want = torch.nn.functional.max_pool2d(q.float().permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)
    assert torch.equal(got, want)


WRONG_ON_AN_H100 = pytest.mark.xfail(
    strict=True,
    reason="an H100, Triton 3.6 (2026-12-06): 16 % of the E4M3 copy between the two products wrong on the 64-channel "
    "pair, the second's output on the larger ones, at 3 stages and at 1; CUDA 13.0's ptxas crashed (SIGSEGV) on the "
    "64-channel pairs; the engine refuses chain on a GPU until this passes",
)


@pytest.mark.parametrize("ptxas", ["triton", "torch"])
@pytest.mark.parametrize("second", [pytest.param("fp8", marks=WRONG_ON_AN_H100), "fp16"])
@pytest.mark.parametrize("k1,n1,n2", [(64, 256, 64), (128, 512, 128), (256, 1024, 256), (512, 2048, 512)])
def test_chained_fp8_convolutions_on_the_gpu(
    monkeypatch: pytest.MonkeyPatch, k1: int, n1: int, n2: int, second: str, ptxas: str
) -> None:
    """fp8_gemm.chain on ResNet-50's four block-to-block shapes (a block's last 1x1, its E4M3
    residual added, into the next block's first) against the two convolutions run one after the
    other: the E4M3 copy between them equal but for summation order (a value on a rounding
    boundary may round the other way: under 1 % of them), the second's output within 2e-2 of its
    largest value, and its E4M3 copy that output rounded. The second product in E4M3 or in fp16
    (MLPERF_TORCH_FP8_CHAIN_SECOND; fp16: not yet run on a GPU), compiled by Triton's ptxas and
    by torch's (the one the model's kernels get once inductor has compiled: fp8_ptxas.ptxases)."""
    _cuda()
    monkeypatch.setenv("MLPERF_TORCH_FP8_CHAIN_SECOND", second)
    import torch
    from mlperf_harness.backends import fp8_gemm, fp8_ptxas, torch_fp8

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9 or later")
    if ptxas not in fp8_ptxas.ptxases():
        pytest.skip(f"no {ptxas} ptxas here")
    fp8_gemm._kernel.cache_clear()  # a fresh jit function: its compiled kernels are not the other ptxas's
    gen = torch.Generator().manual_seed(k1)
    dev, m = torch.device("cuda"), 4 * 56 * 56 + 17

    def fp8(t: Any) -> Any:
        return torch_fp8.quantize(t, 1.0).to(dev)

    x = fp8(torch.relu(torch.randn(m, k1, generator=gen)) * 4)
    w1, w2 = fp8(torch.randn(n1, k1, generator=gen)), fp8(torch.randn(n2, n1, generator=gen))
    s1 = (torch.rand(n1, generator=gen) * 0.05 / (k1 / 64) ** 0.5 + 0.01).to(dev)
    s2 = (torch.rand(n2, generator=gen) * 0.01 / (n1 / 256) ** 0.5 + 0.005).to(dev)
    b1, b2 = (torch.randn(n, generator=gen).to(dev, torch.float16) * 0.1 for n in (n1, n2))
    z, z_scale = fp8(torch.randn(m, n1, generator=gen) * 3), torch.tensor([0.5], device=dev)
    q1_inv, q2_inv = torch.tensor([448 / 12.0], device=dev), torch.tensor([448 / 6.0], device=dev)
    with fp8_ptxas.compiled_by(fp8_ptxas.ptxases()[ptxas]):
        q1, y2, q2 = fp8_gemm.chain(
            x, w1, s1, q1_inv, w2, s2, bias1=b1, z=z, z_scale=z_scale, bias2=b2, out2_dtype=torch.float16, q2_inv=q2_inv
        )
    _, want_q1 = fp8_gemm.gemm(x, w1, s1, b1, z, relu=True, q_inv=q1_inv, z_scale=z_scale)
    want_y2, _ = fp8_gemm.gemm(want_q1, w2, s2, b2, relu=True, out_dtype=torch.float16)
    assert (q1.float() != want_q1.float()).float().mean() < 0.01
    y, want = y2.float(), want_y2.float()
    assert torch.allclose(y, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    # Its E4M3 copy is its output rounded (saturated at 448): within E4M3's half step, plus fp16's.
    v = torch.clamp(y * q2_inv, max=torch_fp8.E4M3_MAX)
    bound = v.abs() * (torch_fp8.E4M3_REL + 2e-3) + torch_fp8.E4M3_SUBNORMAL_ABS
    assert ((q2.float() - v).abs() <= bound).all()


@pytest.mark.parametrize(
    "mode,gemm,residual,stem,kernel",
    [("1x1", "cublas", "fp16", None, None), ("all", "triton", "fp16", None, None),
     ("all", "triton", "fp8", None, None), (None, None, None, None, None), (None, None, None, "fp8", None),
     (None, None, None, None, "zearly,chain"), (None, None, None, None, "zearly,persist")],
)  # fmt: skip
def test_fp8_pipeline_against_fp32_and_its_emulation(
    workspace: Any,
    monkeypatch: pytest.MonkeyPatch,
    mode: str | None,
    gemm: str | None,
    residual: str | None,
    stem: str | None,
    kernel: str | None,
) -> None:
    """fp8 (an engine calibrated by build-engine on the fixture's 32 SYNTHETIC samples): the 36
    1x1 convolutions (``mode`` 1x1) or all 52 but the stem as FP8 GEMMs (torch._scaled_mm and an
    epilogue kernel, or fp8_gemm's one Triton kernel: ``gemm``), the rest fused fp16, CUDA graphs,
    samples resident; the residuals in fp16 or E4M3 (``residual``, MLPERF_TORCH_FP8_RESIDUAL; the
    CPU measured 6.9 % against 5.5 % on the tiny ResNet of test_torch_fp8, so the bounds below
    hold it too); None: the defaults, as a run gets them (all, triton, fp8); ``stem`` fp8
    (MLPERF_TORCH_FP8_STEM): the 7x7 stem too, and the max-pool on its E4M3 copy;
    ``kernel`` zearly,chain (MLPERF_TORCH_FP8_KERNEL): refused on a GPU (15 blocks would each run
    the next one's first 1x1, wrong on an H100); zearly,persist (the default): the convolutions
    of one K step run several tiles a program.

    Bounds, on the pooled features (the synthetic softmax is ill-conditioned, see the fused test):
    - against FP32, relative error < 0.1: the same rewrite emulated on the CPU (test_torch_fp8)
      measured 4.0 %; fp16 in the other layers adds about 1e-3 (the fused fp16 test), fast
      accumulation a rounding of the partial sums far below E4M3's 2^-4;
    - against the CPU emulation of the same engine, < 4e-2: the same E4M3 values and scales,
      only fp16 rounding and summation order differ, each difference at most moving a value
      across an E4M3 rounding boundary (one step, 2^-4 to 2^-3 of it) where it is quantised
      again, so the gap grows with the quantised layers: an H200 measured 1.3e-2 (36 FP8
      layers), 1.4e-2 (52) and 2.1e-2 (52, and 16 E4M3 residuals) (2026-12-05); a wrong scale
      layout, transposed weight or im2col order would be off by O(1);
    The softmax's top-1 agreement with FP32 is printed, not bounded: the random-weight classifier's
    logits are nearly tied, so fp8's 3.9 % feature error moved 15 of 32 top-1 classes on an H200
    (fp16's 1e-3 moved 1), which says nothing of real weights (MLPerf's 99 % needs them and ImageNet).
    The resident path (CUDA graphs over staged rows) answers as host batches."""
    _cuda()
    import torch
    from mlperf_harness.backends.torch_backend import PyTorchBackend
    from mlperf_harness.backends.torch_fp8 import Fp8Conv, Fp8MaxPool, accuracy_gate

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9 or later")
    for name, value in (("CONVS", mode), ("GEMM", gemm), ("RESIDUAL", residual), ("STEM", stem), ("KERNEL", kernel)):
        if value is None:
            monkeypatch.delenv(f"MLPERF_TORCH_FP8_{name}", raising=False)
        else:
            monkeypatch.setenv(f"MLPERF_TORCH_FP8_{name}", value)
    ws = workspace(**GPU, precision="fp8")
    assert steps.build_engine(ws, "Offline").ok
    engine = ws.workdir.artifact(ws.engine("Offline")) / "model.onnx"
    data = images(ws)
    feeds = {"input_tensor:0": data}

    def eager(path: Any, precision: str) -> Any:
        b = PyTorchBackend(use_graphs=False)
        b.load(path, 8, precision, outputs=["softmax_tensor:0"])
        return b

    if kernel == "zearly,chain":  # wrong on an H100 (test_chained_fp8_convolutions_on_the_gpu): refused
        with pytest.raises(HarnessError, match="chain gave wrong results on an H100"):
            eager(engine, "fp8")
        return
    fp8 = eager(engine, "fp8")
    assert fp8.fp8_convs == (36 if mode == "1x1" else 53 if stem == "fp8" else 52)
    fp8_modules = [m for m in fp8._model.modules() if isinstance(m, Fp8Conv)]
    assert all(m.fused == (gemm != "cublas") for m in fp8_modules) and len(fp8_modules) == fp8.fp8_convs
    assert not any(m.chain for m in fp8_modules)
    pools = [m for m in fp8._model.modules() if isinstance(m, Fp8MaxPool)]
    assert len(pools) == (1 if stem == "fp8" else 0) and fp8._channels == 4  # an FP8 stem is padded too
    fp32 = eager(ws.bench.model_file(ws.model_dir), "fp32")
    feats = {name: pooled_features(b, feeds) for name, b in (("fp8", fp8), ("fp32", fp32))}
    with pytest.MonkeyPatch.context() as mp:  # the same engine on the CPU: _scaled_mm emulated
        mp.setattr(torch.cuda, "is_available", lambda: False)
        mp.setenv("MLPERF_TORCH_FP8_GEMM", "cublas")  # the emulation, not the interpreter
        emulated = eager(engine, "fp8")
    feats["emulated"] = pooled_features(emulated, feeds)
    vs32, vs_emulated = accuracy_gate(feats["fp8"], feats["fp32"]), accuracy_gate(feats["fp8"], feats["emulated"])
    fp16 = load(ws, "fp16", "softmax_tensor:0")
    soft = {k: _softmax(b, data) for k, b in (("fp8", fp8), ("fp32", fp32), ("fp16", fp16))}
    top8, top16 = (accuracy_gate(soft[k], soft["fp32"])["top1Agreement"] for k in ("fp8", "fp16"))
    print(
        f"{gemm}, {residual} residuals: fp8 features vs fp32 {vs32}; vs the CPU emulation {vs_emulated}; "
        f"top-1 fp8 {top8:.1f} % fp16 {top16:.1f} %"
    )
    assert vs32["finite"] and vs32["relErr"] < 0.1
    assert vs_emulated["relErr"] < 4e-2

    resident = get_backend("pytorch")
    resident.load(engine, 8, "fp8", outputs=["ArgMax:0"])
    assert resident.reserve_samples(len(data))
    resident.stage_samples(feeds)
    resident.warmup({})
    rows = np.array([5, 3, 30, 0, 7])
    host = get_backend("pytorch")
    host.load(engine, 8, "fp8", outputs=["ArgMax:0"])
    want = host.predict({"input_tensor:0": data[rows]})["ArgMax:0"]
    assert np.array_equal(resident.predict_rows(rows)["ArgMax:0"], want)
    if stem == "fp8":  # cuBLASLt cannot take the 3-channel stem: the error says what to set
        monkeypatch.setenv("MLPERF_TORCH_FP8_GEMM", "cublas")
        with pytest.raises(HarnessError, match="MLPERF_TORCH_FP8_STEM=fp8 needs MLPERF_TORCH_FP8_GEMM=triton"):
            eager(engine, "fp8")


def test_unet3d_full_size_cases_labelled_on_the_gpu(tmp_path: Path) -> None:
    """3d-unet's full-size synthetic cases (dataset.synthetic.size full) as download-data labels them
    where torch sees a GPU: the harness's pytorch backend in fp32 (TF32 off). The small model's labels
    against onnxruntime's on the CPU (2 cases); then one case of the full model at a real shape (the
    median stratum's, about 50 windows of 128^3), its seconds printed: what labelling one of the 43 costs.
    Passed on an H100 (2026-12-05)."""
    _cuda()
    import time

    import nibabel
    from mlperf_harness.benchmarks.unet3d import build_model, kits19
    from mlperf_harness.benchmarks.unet3d.synthetic import gpu_labeller, synthesize_dataset

    assert gpu_labeller() == "pytorch"
    small = build_model(tmp_path / "small.onnx", 7, "small")
    labels = []
    for labeller in (None, "pytorch"):
        out = tmp_path / f"small-{labeller}"
        synthesize_dataset(out, 7, 2, small, batch_size=1, size="full", labeller=labeller)
        labels.append(
            [np.asarray(nibabel.load(out / c / kits19.SEGMENTATION).dataobj) for c in ("case_00000", "case_00001")]
        )
    agreement = [float(np.mean(a == b)) for a, b in zip(*labels, strict=True)]
    full = build_model(tmp_path / "full.onnx", 7, "full")
    t = time.perf_counter()
    facts = synthesize_dataset(tmp_path / "full", 7, 1, full, batch_size=1, size="full", labeller="pytorch")
    seconds = time.perf_counter() - t
    shape = kits19.PREPROCESSED_SHAPES[facts["shapesOf"][0]]  # type: ignore[index]
    print(f"small-model label agreement {agreement}; one full case {shape} made and labelled in {seconds:.1f} s")
    assert min(agreement) > 0.999 and str(facts["labelledBy"]).startswith("pytorch cuda")
