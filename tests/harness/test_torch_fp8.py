"""The FP8 path of the pytorch backend on the CPU: the E4M3 quantisation math, the emulated GEMM,
the convolutions it rewrites (checked against the fp32 convolution of the dequantised tensors,
exactly, and against the fp32 model within the rounding bound derived below), calibration, and
build-engine's scales. The GPU's ``torch._scaled_mm`` is emulated here; its own checks are in
test_harness_gpu.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness_support import pooled_features

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

import onnx  # noqa: E402
from mlperf_harness import artifacts, steps  # noqa: E402
from mlperf_harness.backends import get_backend, torch_fp8  # noqa: E402
from mlperf_harness.backends.torch_backend import FP8_SCALES, fuse_conv_activations  # noqa: E402
from mlperf_harness.benchmarks.synthetic_resnet import _Graph  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

U, SUB = torch_fp8.E4M3_REL, torch_fp8.E4M3_SUBNORMAL_ABS


def rounding_bound(x: Any, scale: Any) -> Any:
    """|dequantize(quantize(x)) - x| for |x| <= 448 * scale: half an E4M3 ulp, relative for normal
    values, absolute (2^-10 of the scale) below the smallest normal."""
    return torch.maximum(U * x.abs(), SUB * scale)


def test_quantize_rounds_within_half_an_ulp_and_saturates() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=gen) * torch.logspace(-6, 0, 10_000)  # normal and subnormal values
    scale = torch_fp8.amax_scale(x.abs().max())
    back = torch_fp8.dequantize(torch_fp8.quantize(x, 1 / scale), scale)
    assert ((back - x).abs() <= rounding_bound(x, scale) * (1 + 1e-6)).all()
    assert float(back.abs().max()) == pytest.approx(float(x.abs().max()), rel=1e-6)  # amax maps to 448 exactly
    # Beyond the calibrated range: saturated to +-448, never NaN (a plain cast would be).
    far = torch_fp8.quantize(torch.tensor([1e6, -1e6, 500.0]), 1.0).float()
    assert far.tolist() == [448.0, -448.0, 448.0]
    assert float(torch_fp8.amax_scale(torch.tensor(0.0))) == 1.0


def test_weight_scales_are_per_output_channel() -> None:
    w = torch.randn(8, 4, 3, 3) * torch.arange(1, 9).reshape(8, 1, 1, 1)
    s = torch_fp8.weight_scales(w)
    assert s.shape == (8,)
    assert torch.allclose(s * 448, w.reshape(8, -1).abs().amax(1))


def test_emulated_scaled_mm_is_the_dequantised_product() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch_fp8.quantize(torch.randn(40, 32, generator=gen) * 50, 1.0)
    b = torch_fp8.quantize(torch.randn(16, 32, generator=gen) * 3, 1.0).t()  # column-major, as on the GPU
    scale_b, bias = torch.rand(1, 16, generator=gen) + 0.1, torch.randn(16, generator=gen)
    got = torch_fp8.scaled_mm(a, b, scale_b, bias, torch.float32)
    want = (a.double() @ b.double()) * scale_b.double() + bias.double()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4)


def _conv(cin: int, cout: int, k: int, stride: int) -> Any:
    conv = torch.nn.Conv2d(cin, cout, k, stride, padding=k // 2)
    with torch.no_grad():
        conv.weight.normal_(0, (2.0 / (cin * k * k)) ** 0.5)
        conv.bias.normal_(0, 0.1)
    return conv.eval()


@pytest.mark.parametrize("gemm", ["cublas", "triton"])
@pytest.mark.parametrize(
    "cin,k,stride,relu,add",
    [(32, 1, 1, True, False), (32, 1, 2, False, False), (32, 1, 1, True, True), (32, 3, 2, True, False),
     (32, 3, 1, True, True), (3, 7, 2, True, False), (4, 7, 2, False, False)],
)  # fmt: skip
def test_fp8_conv_is_the_conv_of_its_quantised_tensors(
    monkeypatch: pytest.MonkeyPatch, gemm: str, cin: int, k: int, stride: int, relu: bool, add: bool
) -> None:
    """The GEMM over channels-last rows (im2col for 3x3; fp8_gemm's implicit GEMM, interpreted, for
    ``triton``; over the window's flattened (tap, channel) pairs for a 3- or 4-channel stem) is
    exactly the convolution of the E4M3 values, padding included; against the fp32
    convolution it is within the rounding bound of each product:
    |x'w' - xw| <= |x' - x| |w'| + |x| |w' - w| summed over the kernel (no cancellation assumed)."""
    monkeypatch.setenv("MLPERF_TORCH_FP8_GEMM", gemm)
    gen = torch.Generator().manual_seed(k * 10 + stride)
    conv = _conv(cin, 48, k, stride)
    x = torch.relu(torch.randn(2, cin, 10, 10, generator=gen)).contiguous(memory_format=torch.channels_last)
    z = torch.randn(2, 48, 10 // stride, 10 // stride, generator=gen) if add else None
    in_scale = torch_fp8.amax_scale(x.abs().max())
    mod = torch_fp8.Fp8Conv(conv, float(in_scale), relu, add, torch.float32, compiled=False)
    got = mod(x, z)

    w_scale = torch_fp8.weight_scales(conv.weight)[:, None, None, None]
    xq = torch_fp8.dequantize(torch_fp8.quantize(x, 1 / in_scale), in_scale)
    wq = torch_fp8.dequantize(torch_fp8.quantize(conv.weight, 1 / w_scale), w_scale)

    def finish(y: Any) -> Any:
        y = y if z is None else y + z
        return torch.relu(y) if relu else y

    with torch.no_grad():
        exact = finish(torch.nn.functional.conv2d(xq, wq, conv.bias, conv.stride, conv.padding))
        fp32 = finish(conv(x) if True else None)
        err_x, err_w = (xq - x).abs(), (wq - conv.weight).abs()
        bound = torch.nn.functional.conv2d(err_x, wq.abs(), None, conv.stride, conv.padding)
        bound += torch.nn.functional.conv2d(x.abs(), err_w, None, conv.stride, conv.padding)
    assert got.shape == fp32.shape
    assert torch.allclose(got, exact, rtol=1e-5, atol=1e-5)
    # ReLU and the add do not widen the error: ReLU is 1-Lipschitz, the residual is exact.
    assert ((got - fp32).abs() <= bound * (1 + 1e-4) + 1e-5).all()
    assert (err_x <= rounding_bound(x, in_scale) * (1 + 1e-6)).all()


def _fp8(x: Any) -> Any:
    return torch_fp8.quantize(x, 1.0)


def _interpreter_carry_only(got: Any, want: Any) -> None:
    """E4M3 copies from the fused kernel equal torch's rounding, but where Triton's interpreter
    (3.6, the CPU stand-in for the GPU's conversion instruction) rounds wrongly: rounding up into
    the next binade it drops the carry and writes half the value (7.96 -> 4, not 8), and among
    subnormals (below 2^-6) it can be one subnormal step (2^-9) off. Those, and only those, may
    differ here; the GPU test compares with the hardware's conversion."""
    got, want = got.float(), want.float()
    off = got != want
    g, w = got[off], want[off]
    carry = (g * 2 == w) & (w.abs().log2() == w.abs().log2().round())
    subnormal = (w.abs() <= 2.0**-6) & ((g - w).abs() <= 2.0**-9)
    assert (carry | subnormal).all(), (g[~(carry | subnormal)], w[~(carry | subnormal)])
    assert off.float().mean() < 0.05


@pytest.mark.parametrize(
    "m,n,k,bias,add,relu,keep,emit",
    [(200, 64, 64, True, False, True, True, True), (130, 256, 192, False, True, True, True, False),
     (64, 128, 80, True, True, False, False, True), (40, 16, 16, False, False, False, True, False),
     (96, 64, 64, False, "fp8", True, True, True)],
)  # fmt: skip
@pytest.mark.parametrize("options", ["none", "tma,zearly"])
def test_fused_gemm_is_the_gemm_and_its_epilogue(
    monkeypatch: pytest.MonkeyPatch,
    options: str,
    m: int,
    n: int,
    k: int,
    bias: bool,
    add: bool | str,
    relu: bool,
    keep: bool,
    emit: bool,
) -> None:
    """fp8_gemm's one kernel (run by Triton's interpreter here) against the emulated
    ``_scaled_mm`` and the epilogue in fp32: partial tiles in every dimension, each flag; the
    residual in fp16, or E4M3 with its scale (``add`` "fp8"); read through pointers or through
    tensor descriptors (TMA, the tile edges their zero fill and clipping), the residual early."""
    from mlperf_harness.backends import fp8_gemm

    monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", options)

    gen = torch.Generator().manual_seed(m + n + k)
    a, b = _fp8(torch.randn(m, k, generator=gen) * 3), _fp8(torch.randn(n, k, generator=gen))
    scale = torch.rand(n, generator=gen) + 0.5
    bias_t = torch.randn(n, generator=gen).half() if bias else None
    z = torch.randn(m, n, generator=gen).half() if add else None
    z_scale = torch.tensor([3.0]) if add == "fp8" else None
    if z_scale is not None:
        z = _fp8(z)
    q_inv = torch.tensor(0.25)
    y, q = fp8_gemm.gemm(
        a, b, scale, bias_t, z, relu=relu, out_dtype=torch.float16 if keep else None, q_inv=q_inv if emit else None,
        z_scale=z_scale,
    )  # fmt: skip
    residual = 0 if z is None else z.float() * (1 if z_scale is None else z_scale)
    want = torch_fp8.scaled_mm(a, b.t(), scale[None], bias_t, torch.float32) + residual
    want = torch.relu(want) if relu else want
    assert (y is None) == (not keep) and (q is None) == (not emit)
    if keep:
        assert y.dtype == torch.float16 and torch.allclose(y.float(), want, rtol=1e-3, atol=1e-3)
    if emit:
        _interpreter_carry_only(q, torch_fp8.quantize(want, q_inv))


@pytest.mark.parametrize("kernel,stride,options", [(1, 1, "tma"), (1, 1, "none"), (3, 2, "none"), (1, 2, "tma")])
def test_fused_conv_quantises_its_input_as_it_reads_it(
    monkeypatch: pytest.MonkeyPatch, kernel: int, stride: int, options: str
) -> None:
    """An fp16 input with ``x_inv``: the kernel's own E4M3 copy of it, the same convolution as of
    torch's copy, to the bit. The values are E4M3's times 2 with ``x_inv`` 1/2, and some far past
    448 x 2: the quantisation is exact or saturates, so the interpreter's rounding (see
    ``_interpreter_carry_only``) cannot enter; the GPU test checks the hardware's rounding."""
    from mlperf_harness.backends import fp8_gemm
    from mlperf_harness.errors import HarnessError

    monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", options)
    gen = torch.Generator().manual_seed(kernel + stride)
    x = _fp8(torch.randn(2, 9, 9, 32, generator=gen) * 40).float() * 2
    x.view(-1)[::97] = 5000.0
    x = x.half()
    w = _fp8(torch.randn(48, kernel * kernel * 32, generator=gen))
    scale = torch.rand(48, generator=gen) + 0.5
    shape = {"kernel": (kernel, kernel), "stride": (stride, stride), "padding": (kernel // 2, kernel // 2)}
    half = torch.tensor([0.5])
    got, _ = fp8_gemm.conv(x, w, scale, x_inv=half, out_dtype=torch.float32, **shape)
    want, _ = fp8_gemm.conv(torch_fp8.quantize(x, half), w, scale, out_dtype=torch.float32, **shape)
    assert torch.equal(got, want)
    with pytest.raises(HarnessError, match="x_inv"):
        fp8_gemm.conv(x, w, scale, out_dtype=torch.float32, **shape)


@pytest.mark.parametrize(
    "k1,n1,n2,z_fp8,out2,tiles,second",
    [(64, 256, 64, True, "q", None, None), (96, 128, 32, False, "yq", None, None), (32, 64, 16, None, "y", None, None),
     (64, 256, 64, True, "yq", "32,64,32,4,2", None), (64, 256, 64, True, "yq", None, "fp16")],
)  # fmt: skip
def test_chained_convolutions_are_the_two_convolutions(
    monkeypatch: pytest.MonkeyPatch,
    k1: int,
    n1: int,
    n2: int,
    z_fp8: bool | None,
    out2: str,
    tiles: str | None,
    second: str | None,
) -> None:
    """fp8_gemm.chain (interpreted): the first 1x1's E4M3 copy and the second's outputs, as two
    ``gemm`` calls give them (the same interpreter rounds both), with a residual in E4M3 or in
    the model's dtype or none, the second's output in fp32 and/or E4M3; with its tiles given
    (MLPERF_TORCH_FP8_CHAIN_TILES) too, and its second product in fp16 (MLPERF_TORCH_FP8_CHAIN_SECOND)."""
    from mlperf_harness.backends import fp8_gemm
    from mlperf_harness.errors import HarnessError

    if tiles:
        monkeypatch.setenv("MLPERF_TORCH_FP8_CHAIN_TILES", tiles)
    if second:
        monkeypatch.setenv("MLPERF_TORCH_FP8_CHAIN_SECOND", second)

    gen = torch.Generator().manual_seed(k1 + n1 + n2)
    m = 150  # not a multiple of the tile's 64 rows
    x = _fp8(torch.relu(torch.randn(m, k1, generator=gen)) * 4)
    w1, w2 = _fp8(torch.randn(n1, k1, generator=gen)), _fp8(torch.randn(n2, n1, generator=gen))
    s1, s2 = torch.rand(n1, generator=gen) * 0.05 + 0.02, torch.rand(n2, generator=gen) * 0.01 + 0.01
    b1, b2 = torch.randn(n1, generator=gen) * 0.1, torch.randn(n2, generator=gen) * 0.1
    z = None if z_fp8 is None else torch.randn(m, n1, generator=gen) * 3
    z_scale = torch.tensor([0.5]) if z_fp8 else None
    z = _fp8(z) if z_fp8 else z
    q1_inv, q2_inv = torch.tensor([448 / 12.0]), torch.tensor([448 / 6.0]) if "q" in out2 else None
    out_dtype = torch.float32 if "y" in out2 else None
    q1, y2, q2 = fp8_gemm.chain(
        x, w1, s1, q1_inv, w2, s2, bias1=b1, z=z, z_scale=z_scale, bias2=b2, out2_dtype=out_dtype, q2_inv=q2_inv
    )
    _, want_q1 = fp8_gemm.gemm(x, w1, s1, b1, z, relu=True, q_inv=q1_inv, z_scale=z_scale)
    want_y2, want_q2 = fp8_gemm.gemm(want_q1, w2, s2, b2, relu=True, out_dtype=out_dtype, q_inv=q2_inv)
    assert torch.equal(q1.float(), want_q1.float())
    for got, want in ((y2, want_y2), (q2, want_q2)):
        assert (got is None) == (want is None)
        assert got is None or torch.allclose(got.float(), want.float(), rtol=1e-6, atol=1e-6)
    with pytest.raises(HarnessError, match="do not follow one another"):
        fp8_gemm.chain(x, w1, s1, q1_inv, w2[:, :16], s2, q2_inv=q1_inv)
    with pytest.raises(HarnessError, match="N2 a power of two"):
        fp8_gemm.chain(x, w1, s1, q1_inv, w2[:12], s2[:12], q2_inv=q1_inv)
    monkeypatch.setenv("MLPERF_TORCH_FP8_CHAIN_TILES", "64,128")
    with pytest.raises(HarnessError, match="MLPERF_TORCH_FP8_CHAIN_TILES: '64,128' is not five integers"):
        fp8_gemm.chain_tiles(k1, n1, n2)
    monkeypatch.setenv("MLPERF_TORCH_FP8_CHAIN_SECOND", "bf16")
    with pytest.raises(HarnessError, match="MLPERF_TORCH_FP8_CHAIN_SECOND: 'bf16' is not fp8 or fp16"):
        fp8_gemm.chain_second()


def test_persistent_kernels_where_the_k_loop_has_one_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLPERF_TORCH_FP8_KERNEL=zearly,persist (the default): on a GPU a convolution of one K step (a 1x1 over 64
    or 128 channels) runs several tiles a program, the tile loop flattened with the K loop; one
    of more steps (a 3x3, a 1x1 over 256) one tile a program, and the interpreter always (its
    loops cannot run to a launch-time bound). Compiled for Hopper here (fp8_ptxas), the
    persistent 64 -> 256 one holds more than one stage of operands in shared memory (pipelined
    across tiles) and spills nothing; the GPU tests run it."""
    from mlperf_harness.backends import fp8_gemm, fp8_ptxas

    def persist(c: int, n: int, kernel: int, cuda: bool = True) -> bool:
        consts, _ = fp8_gemm.conv_constants(
            (1024, 56, 56, c), n, (kernel, kernel), (1, 1), (kernel // 2, kernel // 2), has_bias=True, has_z=True,
            z_scaled=True, relu=True, write_y=False, write_q=True, x_quant=False, fast_accum=True, cuda=cuda,
        )  # fmt: skip
        return bool(consts["PERSIST"])

    monkeypatch.delenv("MLPERF_TORCH_FP8_KERNEL", raising=False)
    assert persist(64, 256, 1)  # the default since an H100 measured it (BENCHMARKS.md)
    monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", "zearly")
    one_tile = fp8_ptxas.conv_usage(56, 256, 64, 1, 1)
    assert not persist(64, 256, 1)
    monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", "zearly,persist")
    assert (persist(64, 256, 1), persist(128, 512, 1), persist(256, 64, 1), persist(64, 64, 3)) == (
        True,
        True,
        False,
        False,
    )
    assert not persist(64, 256, 1, cuda=False)
    tiles = fp8_ptxas.conv_usage(56, 256, 64, 1, 1)
    print(one_tile, tiles)
    assert tiles.spilled == 0 and tiles.shared >= 2 * one_tile.shared


def test_tiles_follow_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default tiles of ResNet-50's shapes, as the H200 sweep chose them; BN fits N."""
    from mlperf_harness.backends import fp8_gemm

    monkeypatch.delenv("MLPERF_TORCH_FP8_TILES", raising=False)

    def pick(n: int, c: int, taps: int) -> tuple[int, ...]:
        return tuple(fp8_gemm.tiles(1 << 20, n, c, taps)[k] for k in fp8_gemm.TILE_KEYS)

    assert pick(512, 512, 9) == pick(256, 1024, 1) == (128, 256, 128, 8, 3)
    assert pick(128, 512, 1) == (128, 128, 128, 8, 3)  # BN capped at N
    assert pick(256, 64, 1) == (128, 128, 64, 4, 4)
    assert pick(64, 64, 9) == pick(64, 64, 1) == (128, 64, 64, 4, 4)
    assert pick(128, 128, 9) == pick(1024, 256, 1) == pick(2048, 512, 1) == (128, 128, 128, 4, 3)
    monkeypatch.setenv("MLPERF_TORCH_FP8_TILES", "64,256,64,4,2")
    assert pick(64, 512, 9) == (64, 64, 64, 4, 2)


def test_fused_gemm_names_bad_shapes_and_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlperf_harness.backends import fp8_gemm
    from mlperf_harness.errors import HarnessError

    a = _fp8(torch.ones(4, 32))
    with pytest.raises(HarnessError, match="do not multiply"):
        fp8_gemm.gemm(a, _fp8(torch.ones(16, 48)), torch.ones(16), out_dtype=torch.float16)
    with pytest.raises(HarnessError, match="neither"):
        fp8_gemm.gemm(a, _fp8(torch.ones(16, 32)), torch.ones(16))
    with pytest.raises(HarnessError, match="E4M3 residual comes with its scale"):
        fp8_gemm.gemm(a, _fp8(torch.ones(16, 32)), torch.ones(16), z=_fp8(torch.ones(4, 16)), out_dtype=torch.float16)

    def stem(c: int, cuda: bool) -> bool:
        flags = dict.fromkeys(("has_bias", "has_z", "z_scaled", "relu", "write_y", "write_q", "x_quant"), False)
        consts, _ = fp8_gemm.conv_constants(
            (8, 112, 112, c), 64, (7, 7), (2, 2), (3, 3), **flags, fast_accum=True, cuda=cuda
        )
        return bool(consts["FLAT_K"])

    assert stem(4, cuda=True) and stem(3, cuda=False)  # 3 channels: right when interpreted, wrong on an H100
    with pytest.raises(HarnessError, match=r"a 3-channel input: .* pad the channels with zeros"):
        stem(3, cuda=True)
    monkeypatch.setenv("MLPERF_TORCH_FP8_GEMM", "cutlass")
    with pytest.raises(HarnessError, match="MLPERF_TORCH_FP8_GEMM"):
        fp8_gemm.gemm_kind(True)
    monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", "tma,wgmma")
    with pytest.raises(HarnessError, match="'tma,wgmma': wgmma is not one of tma, zearly, chain, persist"):
        fp8_gemm.kernel_options()
    for tiles, why in (("128,256", "five integers"), ("128,8,128,8,3", "at least 16"), ("128,96,64,4,4", "powers")):
        monkeypatch.setenv("MLPERF_TORCH_FP8_TILES", tiles)
        with pytest.raises(HarnessError, match=why):
            fp8_gemm.tiles(1024, 256, 64)


def _tiny_resnet(path: Path, pool: bool = False) -> Path:
    """A stem (with ``pool``, and ResNet's 3x3 max-pool), two bottlenecks and a strided one
    (projection shortcut) of the synthetic ResNet's layers, on 32x32 inputs: every kind of
    convolution the rewrite meets."""
    g = _Graph(np.random.default_rng(0))
    x = g.conv("x", 3, 32, 7, 2, True, gain=1 / 60)
    if pool:
        g.nodes.append(helper.make_node("MaxPool", [x], ["pooled"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
        x = "pooled"
    x, c = g.bottleneck(x, 32, 16, 1)
    x, c = g.bottleneck(x, c, 16, 1)
    x, c = g.bottleneck(x, c, 32, 2)
    graph = helper.make_graph(
        g.nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    "mode,emit,gemm,residual",
    [("1x1", True, "cublas", "fp16"), ("1x1", False, "cublas", "fp16"), ("all", True, "cublas", "fp16"),
     ("all", False, "triton", "fp16"), ("1x1", True, "cublas", "fp8"), ("all", True, "cublas", "fp8")],
)  # fmt: skip
def test_rewritten_model_matches_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, emit: bool, gemm: str, residual: str
) -> None:
    """The whole rewrite (fusion, calibration, FP8 GEMMs, quantised copies written by the
    producer; ``_scaled_mm`` emulated, or fp8_gemm's fused kernel interpreted, whose quantised
    copies the interpreter rounds wrongly, see ``_interpreter_carry_only``, so it runs without
    them) against the fp32 model. Bound: E4M3 rounds each operand within 2^-4 relative (RMS
    about 2^-4/sqrt(3) = 3.6 %), so one layer's output is off by a few per cent; eleven
    layers through residual blocks measured 5.6 % (1x1) and 5.9 % (all) here: 0.12 leaves
    room for other seeds, and a wrong scale or a dropped residual is far beyond it. With the
    residuals in E4M3 too (``residual`` fp8) the three residual adds round once more."""
    from onnx2torch import convert

    monkeypatch.setenv("MLPERF_TORCH_FP8_GEMM", gemm)
    monkeypatch.setenv("MLPERF_TORCH_FP8_RESIDUAL", residual)
    proto = onnx.load(_tiny_resnet(tmp_path / "tiny.onnx"))
    ref, model = convert(proto).eval(), convert(proto).eval()
    assert fuse_conv_activations(model) == (10, 2)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 60
    amax = torch_fp8.calibrate(model, [x], "all")
    assert len(amax) == 12 + 3  # every convolution, the 3-channel stem too; the residuals of the 3 blocks
    n = torch_fp8.quantize_model(model, amax, mode, torch.float32, compiled=False, emit=emit)
    assert n == (8 if mode == "1x1" else 11)  # 2 per block and 2 projections; + the 3 3x3 ones
    emitted = [m for m in model.modules() if isinstance(m, torch_fp8.Fp8Conv) and m.emit_scale is not None]
    # Block outputs read by the next conv1 (and projection); in mode all also conv1 -> 3x3 -> conv3;
    # with E4M3 residuals also the 2 projections, read only as residuals.
    assert len(emitted) == ((2 if mode == "1x1" else 8) + (2 if residual == "fp8" else 0) if emit else 0)
    adders = [m for m in model.modules() if isinstance(m, torch_fp8.Fp8Conv) and m.z_scale is not None]
    assert len(adders) == (3 if residual == "fp8" else 0)
    # In E4M3 residuals, a block output only FP8 layers read is written once, in E4M3.
    kept = sum(m.keep for m in emitted)
    assert kept == (1 if emit and residual == "fp16" else 0)  # block 1's output, read as block 2's residual
    with torch.inference_mode():
        got, want = model(x), ref(x)
    gate = torch_fp8.accuracy_gate(got.reshape(4, -1).numpy(), want.reshape(4, -1).numpy())
    print(mode, emit, gemm, residual, gate)
    assert gate["finite"] and gate["relErr"] < 0.12


@pytest.mark.parametrize("gemm,emit", [("cublas", True), ("triton", False)])
def test_fp8_stem_and_its_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemm: str, emit: bool) -> None:
    """MLPERF_TORCH_FP8_STEM=fp8: the 3-channel 7x7 stem becomes FP8 too (emulated, or fp8_gemm's
    kernel over the window's flattened taps, interpreted: the interpreter's rounding of the
    quantised copies, ``_interpreter_carry_only``, keeps that case without them); emitting, it
    writes only its E4M3 copy and the max-pool after it pools that copy for the two convolutions
    that read it, at their shared scale. Against the fp32 model within the bound of
    ``test_rewritten_model_matches_fp32``; the input's own rounding (the images in E4M3) adds
    about 0.6 % here to the fp16 stem's error."""
    from onnx2torch import convert

    monkeypatch.setenv("MLPERF_TORCH_FP8_GEMM", gemm)
    proto = onnx.load(_tiny_resnet(tmp_path / "tiny.onnx", pool=True))
    ref = convert(proto).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 60
    with torch.inference_mode():
        want = ref(x).reshape(4, -1).numpy()
    gates = {}
    for stem in ("fp16", "fp8"):
        monkeypatch.setenv("MLPERF_TORCH_FP8_STEM", stem)
        model = convert(proto).eval()
        fuse_conv_activations(model)
        amax = torch_fp8.calibrate(model, [x], "all")
        assert torch_fp8.quantize_model(model, amax, "all", torch.float32, compiled=False, emit=emit) == (
            12 if stem == "fp8" else 11
        )
        pools = [m for m in model.modules() if isinstance(m, torch_fp8.Fp8MaxPool)]
        assert len(pools) == (1 if stem == "fp8" and emit else 0)
        if pools:  # the stem writes its E4M3 copy alone, with the scale its two readers share
            stem_conv = next(m for m in model.modules() if getattr(m, "kernel", None) == (7, 7))
            convs = [m for m in model.modules() if isinstance(m, torch_fp8.Fp8Conv)]
            readers = [m for m in convs if m.in_scale == stem_conv.emit_scale]
            assert not stem_conv.keep and len(readers) >= 2
        with torch.inference_mode():
            got = model(x).reshape(4, -1).numpy()
        gates[stem] = torch_fp8.accuracy_gate(got, want)
    print(gemm, emit, gates)
    assert gates["fp8"]["finite"] and gates["fp8"]["relErr"] < 0.12
    assert gates["fp8"]["relErr"] != gates["fp16"]["relErr"]  # the stem did change
    monkeypatch.setenv("MLPERF_TORCH_FP8_STEM", "int8")
    from mlperf_harness.errors import HarnessError

    with pytest.raises(HarnessError, match="MLPERF_TORCH_FP8_STEM: 'int8' is not one of fp16, fp8"):
        torch_fp8.stem_mode()


def test_chained_blocks_answer_as_unchained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLPERF_TORCH_FP8_KERNEL=zearly,chain: a block's output (written only in E4M3) and the next
    block's first convolution run in one kernel; the tiny ResNet's two such pairs (fp8_gemm
    interpreted) answer exactly as without the option."""
    from onnx2torch import convert

    monkeypatch.setenv("MLPERF_TORCH_FP8_GEMM", "triton")
    proto = onnx.load(_tiny_resnet(tmp_path / "tiny.onnx", pool=True))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 60
    outs, heads = {}, {}
    for options in ("zearly", "zearly,chain"):
        monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", options)
        model = convert(proto).eval()
        fuse_conv_activations(model)
        amax = torch_fp8.calibrate(model, [x], "all")
        assert torch_fp8.quantize_model(model, amax, "all", torch.float32, compiled=False) == 11
        convs = [m for m in model.modules() if isinstance(m, torch_fp8.Fp8Conv)]
        heads[options] = sum(m.chain is not None for m in convs)
        assert len(convs) == 11  # a chained convolution is its head's submodule, once
        with torch.inference_mode():
            outs[options] = model(x)
    assert heads == {"zearly": 0, "zearly,chain": 2}
    assert torch.equal(outs["zearly"], outs["zearly,chain"])


@pytest.mark.parametrize("channels,padding", [(64, 1), (20, 0)])
def test_fp8_max_pool_pools_the_rounded_values(channels: int, padding: int) -> None:
    """fp8_gemm's max-pool (interpreted) and the CPU's on E4M3 values, negative ones too: the
    pool of the rounded values, exactly, which is the rounding of the pool (rounding is monotonic)."""
    from mlperf_harness.backends import fp8_gemm
    from mlperf_harness.errors import HarnessError

    gen = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 11, 9, generator=gen) * 50
    q = _fp8(x).contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.max_pool2d(q.float(), 3, 2, padding)
    assert torch.equal(want, _fp8(torch.nn.functional.max_pool2d(x, 3, 2, padding)).float())
    got = fp8_gemm.max_pool(q.permute(0, 2, 3, 1), 3, 2, padding).permute(0, 3, 1, 2)
    assert got.dtype == torch_fp8.FP8 and torch.equal(got.float(), want)
    assert torch.equal(torch_fp8.Fp8MaxPool(3, 2, padding)(q).float(), want)
    with pytest.raises(HarnessError, match="E4M3"):
        fp8_gemm.max_pool(x.permute(0, 2, 3, 1), 3, 2, padding)


def test_missing_range_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlperf_harness.errors import HarnessError
    from onnx2torch import convert

    model = convert(onnx.load(_tiny_resnet(tmp_path / "tiny.onnx"))).eval()
    fuse_conv_activations(model)
    with pytest.raises(HarnessError, match="build-engine"):
        torch_fp8.quantize_model(model, {}, "1x1", torch.float32, compiled=False)
    # An engine calibrated before the residual ranges were: E4M3 residuals ask for a rebuild, fp16 ones run.
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 60
    amax = {k: v for k, v in torch_fp8.calibrate(model, [x], "all").items() if not k.endswith(torch_fp8.RESIDUAL)}
    monkeypatch.setenv("MLPERF_TORCH_FP8_RESIDUAL", "fp8")
    with pytest.raises(HarnessError, match=r"residual range .*MLPERF_TORCH_FP8_RESIDUAL=fp8.*build-engine"):
        torch_fp8.quantize_model(model, amax, "1x1", torch.float32, compiled=False)
    monkeypatch.setenv("MLPERF_TORCH_FP8_RESIDUAL", "int8")
    with pytest.raises(HarnessError, match="MLPERF_TORCH_FP8_RESIDUAL: 'int8' is not one of fp16, fp8"):
        torch_fp8.residual_mode()
    monkeypatch.setenv("MLPERF_TORCH_FP8_RESIDUAL", "fp16")
    assert torch_fp8.quantize_model(model, amax, "1x1", torch.float32, compiled=False) == 8


def test_resnet50_convolutions_chosen_by_shape(workspace: Any) -> None:
    """ResNet-50: the 32 1x1 convolutions of the bottlenecks and the 4 projection shortcuts
    (3 strided) become FP8 GEMMs in mode 1x1; the 16 3x3 ones too in mode all; never the
    3-channel 7x7 stem (nor the classifier, a Gemm)."""
    from onnx2torch import convert

    ws = workspace()
    model = convert(onnx.load(ws.bench.model_file(ws.model_dir))).eval()
    fuse_conv_activations(model)
    one, every = torch_fp8.candidates(model, "1x1"), torch_fp8.candidates(model, "all")
    shapes = [tuple(model.get_submodule(str(n.target)).weight.shape[2:]) for n in every]
    assert (len(one), len(every), shapes.count((3, 3))) == (36, 52, 16)
    stem = next(m for m in model.modules() if getattr(m, "weight", None) is not None and m.weight.shape[1] == 3)
    assert torch_fp8.conv_facts(stem) is not None and not torch_fp8.eligible(torch_fp8.conv_facts(stem)[0], "all")
    assert len(torch_fp8.candidates(model, "all", unaligned=True)) == 53  # MLPERF_TORCH_FP8_STEM=fp8


def test_resnet50_chains_each_block_into_the_next(workspace: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet-50 with MLPERF_TORCH_FP8_KERNEL=zearly,chain: each of the 16 blocks' last 1x1 but
    the last block's (whose output is pooled) runs the next block's first 1x1 in its kernel; the
    seven distinct pairs' kernels, and the FP8 stem's, compile for Hopper without spilling (under
    the ptxas of Triton and of torch: fp8_ptxas.ptxases)."""
    from onnx2torch import convert

    monkeypatch.setenv("MLPERF_TORCH_FP8_GEMM", "triton")
    monkeypatch.setenv("MLPERF_TORCH_FP8_KERNEL", "zearly,chain")
    ws = workspace()
    model = convert(onnx.load(ws.bench.model_file(ws.model_dir))).eval()
    fuse_conv_activations(model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    amax = torch_fp8.calibrate(model, [x], "all")
    assert torch_fp8.quantize_model(model, amax, "all", torch.float32, compiled=False) == 52
    heads = [m for m in model.modules() if isinstance(m, torch_fp8.Fp8Conv) and m.chain is not None]
    assert len(heads) == 15 and all(h.add and h.chain.kernel == (1, 1) and not h.chain.add for h in heads)
    # Their kernels as Hopper would run them (compiled for sm_90a here): the tile rule spills no register.
    from mlperf_harness.backends import fp8_ptxas

    pairs = sorted({(h.w_t.shape[0], h.w_t.shape[1], h.chain.w_t.shape[1]) for h in heads})
    assert len(pairs) == 7
    # The second product in fp16 under either ptxas; in E4M3 under Triton's (CUDA 13.0's crashed
    # on the 64-channel pairs, 2026-12-06: not asserted either way).
    for name, path in fp8_ptxas.ptxases().items():
        monkeypatch.setenv("TRITON_PTXAS_PATH", path)
        for second in ("fp16", "fp8") if name == "triton" else ("fp16",):
            monkeypatch.setenv("MLPERF_TORCH_FP8_CHAIN_SECOND", second)
            for pair in pairs:
                got = fp8_ptxas.chain_usage(*pair)
                print(name, second, pair, got)
                assert got.spilled == 0 and got.registers <= 255
    monkeypatch.delenv("TRITON_PTXAS_PATH")
    stem = fp8_ptxas.conv_usage(112, 64, 4, 7, 2)  # MLPERF_TORCH_FP8_STEM=fp8 over the padded input
    assert stem.spilled == 0 and stem.shared > 32 * 1024, stem  # pipelined: stages of its K loop in shared memory


def test_accuracy_gate_figures() -> None:
    want = np.array([[1.0, 0.0], [0.0, 1.0]])
    gate = torch_fp8.accuracy_gate(np.array([[0.9, 0.1], [0.6, 0.4]]), want)
    assert gate["top1Agreement"] == 50.0 and gate["finite"] == 1.0
    assert gate["relErr"] == pytest.approx(np.sqrt(0.02 + 0.72) / np.sqrt(2))


def test_build_engine_calibrates_and_keys_the_scales(workspace: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """build-engine for fp8 on the CPU: the engine holds the model and the calibrated ranges (on
    the SYNTHETIC set's first samples); its key names the calibration data; a backend loaded from
    the engine with the defaults (every eligible convolution, E4M3 residuals) answers as the fp32
    model on most samples (emulated GEMMs)."""
    ws = workspace(backend="pytorch", precision="fp8")
    engine = ws.engine("Offline")
    assert engine.inputs["calibration"]["preprocessed"] == artifacts.preprocessed(ws.spec).key
    fp16 = workspace(backend="pytorch", precision="fp16").engine("Offline")
    assert "calibration" not in fp16.inputs and fp16.key != engine.key
    assert steps.build_engine(ws, "Offline").ok
    out = ws.workdir.artifact(engine)
    scales = (out / FP8_SCALES).read_text()
    # The 53 convolutions' input ranges (the stem's for MLPERF_TORCH_FP8_STEM=fp8) and the 16
    # residual adds' ranges (MLPERF_TORCH_FP8_RESIDUAL=fp8).
    assert '"samples": 32' in scales and scales.count("fused_") + scales.count("Conv_") == 53 + 16
    assert scales.count(torch_fp8.RESIDUAL) == 16

    data = np.asarray(ws.samples().fixed["input_tensor:0"][:8])
    fp8, fp32 = get_backend("pytorch"), get_backend("pytorch")
    fp8.load(out / "model.onnx", 8, "fp8", outputs=["softmax_tensor:0"])
    fp32.load(ws.bench.model_file(ws.model_dir), 8, "fp32", outputs=["softmax_tensor:0"])
    assert fp8.fp8_convs == 52  # type: ignore[attr-defined]  # the default mode: all
    feats = [pooled_features(b, {"input_tensor:0": data}) for b in (fp8, fp32)]
    gate = torch_fp8.accuracy_gate(*feats)
    print(gate)
    # On the pooled features (the softmax of the synthetic classifier is ill-conditioned: its
    # margins are tiny, fp16 alone moves 21 of this fixture's 32 top-1s). 53 layers, each within
    # a few per cent (test_rewritten_model_matches_fp32), residual paths keeping the error from
    # compounding: measured 4.8 % here; 0.1 bounds it with room.
    assert gate["finite"] and gate["relErr"] < 0.1
    # The same engine with an FP8 stem (its range is in the engine): 53 FP8 convolutions, the
    # max-pool on the stem's E4M3 copy; measured 4.6 % here.
    monkeypatch.setenv("MLPERF_TORCH_FP8_STEM", "fp8")
    stem = get_backend("pytorch")
    stem.load(out / "model.onnx", 8, "fp8", outputs=["softmax_tensor:0"])
    assert stem.fp8_convs == 53  # type: ignore[attr-defined]
    assert any(isinstance(m, torch_fp8.Fp8MaxPool) for m in stem._model.modules())  # type: ignore[attr-defined]
    gate = torch_fp8.accuracy_gate(pooled_features(stem, {"input_tensor:0": data}), feats[1])
    print(gate)
    assert gate["finite"] and gate["relErr"] < 0.1
