"""One Triton kernel for an FP8 convolution (any kernel size and stride) and its whole epilogue.

``Fp8Conv`` on cuBLASLt (``torch._scaled_mm``) writes the GEMM's fp16 result, then reads it again
in an inductor kernel that adds the residual, applies ReLU and writes the E4M3 copy the next FP8
layer reads: on an H200 that epilogue took 31.5 % of a batch's GPU time, more than the FP8 GEMMs
saved (BENCHMARKS.md, "resnet50 in FP8, first try"); and its 3x3 convolutions went through an
im2col copy (mode ``all``: 0.31 of fp16). Here the convolution is an implicit GEMM: each tile of
output pixels reads its input pixels where the kernel window puts them (zero outside the image,
which is the padding), straight from the channels-last E4M3 activations, with no patch matrix
and no strided copy; the product stays in registers until it is scaled (per output channel),
biased, added to the residual, rectified and written, in the model's dtype and/or quantised to
E4M3, once. A plain GEMM is the 1x1 case over one-pixel images (``gemm``).

``conv`` runs the kernel compiled for a GPU, or through Triton's interpreter on CPU tensors, which
is how the CPU tests check it against the emulated ``scaled_mm`` path. On the GPU it is the
default (``gemm_kind``); it gave the cuBLASLt path's accuracy and beat it on every convolution
shape (H100 and H200, 2026-12-05, ``benchmarks/gpu_fp8.py``, BENCHMARKS.md). Each shape's tiles
come from ``tiles``' rule: the best tile of each shape timed alone, taken per shape, ran the
model slower on an H200 (55,327 against 57,200 images/s, 2026-12-05). An fp16 input (the stem's
pooled output) is quantised as the kernel reads it (``x_inv``). Reading the 1x1 stride-1
operands through TMA descriptors (option ``tma``) ran the model slower than through pointers on
an H100 (51,133 against 52,163); reading the residual's tile before the products (``zearly``)
faster (53,351), and is the default.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl

from ..errors import HarnessError

KINDS = ("cublas", "triton")


def gemm_kind(cuda: bool) -> str:
    """MLPERF_TORCH_FP8_GEMM: ``triton`` (default on a GPU: ``conv``, one kernel, the epilogue
    fused) or ``cublas`` (default on the CPU, where it is the emulation: ``torch._scaled_mm`` over
    im2col patches, then the epilogue as its own kernel; Triton's interpreter is slow)."""
    kind = os.environ.get("MLPERF_TORCH_FP8_GEMM", "triton" if cuda else "cublas")
    if kind not in KINDS:
        raise HarnessError(f"MLPERF_TORCH_FP8_GEMM: {kind!r} is not one of {', '.join(KINDS)}")
    return kind


OPTIONS = ("tma", "zearly")
# zearly: resnet50 fp8 52,163 -> 53,351 images/s on an H100; tma: 51,133 (2026-12-05, BENCHMARKS.md).
DEFAULT_OPTIONS = frozenset({"zearly"})


def kernel_options() -> frozenset[str]:
    """MLPERF_TORCH_FP8_KERNEL: a comma-separated subset of ``tma`` (1x1 stride-1 convolutions
    read and written through Hopper's tensor memory accelerator) and ``zearly`` (the residual's
    tile read before the products); ``none`` or empty: neither; unset: ``DEFAULT_OPTIONS``."""
    raw = os.environ.get("MLPERF_TORCH_FP8_KERNEL")
    if raw is None:
        return DEFAULT_OPTIONS
    chosen = frozenset(v.strip() for v in raw.split(",") if v.strip() and v.strip() != "none")
    if chosen - set(OPTIONS):
        raise HarnessError(
            f"MLPERF_TORCH_FP8_KERNEL: {raw!r}: {', '.join(sorted(chosen - set(OPTIONS)))} is not one of "
            f"{', '.join(OPTIONS)} (comma-separated), or none"
        )
    return chosen


def _body(
    x_ptr, w_ptr, scale_ptr, bias_ptr, z_ptr, z_scale_ptr, y_ptr, q_ptr, q_inv_ptr, x_inv_ptr,
    x_desc, w_desc, z_desc, y_desc, q_desc,
    M, N,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, Z_SCALED: tl.constexpr, RELU: tl.constexpr,
    WRITE_Y: tl.constexpr, WRITE_Q: tl.constexpr, X_QUANT: tl.constexpr, TMA: tl.constexpr, Z_EARLY: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, IMPRECISE: tl.constexpr,
):  # fmt: skip
    """Y (M = images x HO x WO, N) = the convolution of X (images, H, W, C), E4M3, contiguous, with
    the weight rows W (N, KH x KW x C, in that order: K-major, as FP8 tensor cores read it). Then
    per column: times scale, plus bias; per element: plus Z (an E4M3 Z times its scale where
    Z_SCALED), ReLU; written to Y and/or, times q_inv
    saturated to E4M3 (448), to Q. X_QUANT: X comes in the model's dtype and is quantised here,
    times x_inv, as it is read (no E4M3 copy of it written first). TMA (1x1, stride 1: X is the
    (M, C) matrix): X, W and Z read and Y, Q written by Hopper's tensor memory accelerator through
    the ``*_desc`` descriptors, the tile edges its zero fill and clipping. Z_EARLY: Z's tile is
    read before the products, its latency under theirs. IMPRECISE: the tensor cores' partial sums
    are promoted to fp32 every that many products (0: every one, slower; None: Triton's default,
    fast on Hopper). The layer's shape is compile-time (a network has few; loops and index
    arithmetic then fold), the batch is not. Core builtins only: Triton's interpreter cannot call
    its standard library's jit functions (cdiv, zeros) unless it was switched on before triton
    was imported."""
    pid = tl.program_id(0)
    grid_m, grid_n = (M + BM - 1) // BM, (N + BN - 1) // BN
    # Tiles in groups of GROUP_M rows of tiles, so that neighbouring programs share X's pixels in L2.
    in_group = GROUP_M * grid_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)  # pixels x channels passes 2^31 at batch 2048
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    image, pixel = rm // (HO * WO), rm % (HO * WO)
    top, left = (pixel // WO) * SH - PH, (pixel % WO) * SW - PW  # the window's corner in the input
    row_in = rm < M
    col = rn < N
    at = rm[:, None] * N + rn[None, :]
    written = row_in[:, None] & col[None, :]
    if HAS_Z and Z_EARLY:
        z = z_desc.load([pid_m * BM, pid_n * BN]) if TMA else tl.load(z_ptr + at, mask=written, other=0.0)
    if X_QUANT:
        x_inv = tl.load(x_inv_ptr)
    acc = tl.full((BM, BN), 0.0, dtype=tl.float32)
    for step in range(KH * KW * ((C + BK - 1) // BK)):
        tap, c0 = step // ((C + BK - 1) // BK), (step % ((C + BK - 1) // BK)) * BK
        if TMA:
            x = x_desc.load([pid_m * BM, c0])
            w = tl.trans(w_desc.load([pid_n * BN, c0]))
        else:
            ih, iw = top + tap // KW, left + tap % KW
            inside = row_in & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # outside: the zero padding
            channel = c0 + rk < C
            x = tl.load(
                x_ptr + ((image * H + ih) * W + iw)[:, None] * C + (c0 + rk)[None, :],
                mask=inside[:, None] & channel[None, :],
                other=0.0,
            )
            w = tl.load(
                w_ptr + rn[None, :] * (KH * KW * C) + (tap * C + c0 + rk)[:, None],
                mask=channel[:, None] & col[None, :],
                other=0.0,
            )
        if X_QUANT:
            x = tl.clamp(x.to(tl.float32) * x_inv, -448.0, 448.0).to(w.dtype)
        acc = tl.dot(x, w, acc, max_num_imprecise_acc=IMPRECISE)
    acc = acc * tl.load(scale_ptr + rn, mask=col, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=col, other=0.0).to(tl.float32)[None, :]
    if HAS_Z:
        if not Z_EARLY:
            z = z_desc.load([pid_m * BM, pid_n * BN]) if TMA else tl.load(z_ptr + at, mask=written, other=0.0)
        z = z.to(tl.float32)
        if Z_SCALED:
            z = z * tl.load(z_scale_ptr)
        acc += z
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if WRITE_Y:
        y = acc.to(y_ptr.dtype.element_ty)
        if TMA:
            y_desc.store([pid_m * BM, pid_n * BN], y)
        else:
            tl.store(y_ptr + at, y, mask=written)
    if WRITE_Q:
        q = tl.clamp(acc * tl.load(q_inv_ptr), -448.0, 448.0).to(q_ptr.dtype.element_ty)
        if TMA:
            q_desc.store([pid_m * BM, pid_n * BN], q)
        else:
            tl.store(q_ptr + at, q, mask=written)


@functools.cache
def _kernel(interpret: bool) -> Any:
    """The kernel compiled for the GPU, or run by Triton's interpreter (CPU tensors)."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_body)
    return triton.jit(_body)


TILE_KEYS = ("BM", "BN", "BK", "num_warps", "num_stages")


def tiles(m: int, n: int, c: int, taps: int = 1) -> dict[str, int]:
    """Tile sizes and launch settings for one convolution (``c`` input channels, ``taps`` kernel
    positions, ``n`` output channels), from the sweep of ResNet-50's 22 shapes at batch 1024 on
    an H200 (2026-12-05, ``benchmarks/gpu_fp8.py --gemms wide``, BENCHMARKS.md): deep products
    (3x3 over 256 or more channels, 1x1 over 512 or more into at most 512) take 128x256 tiles of
    K 128 in 8 warps; 64-channel inputs 128x128 tiles of K 64 in 4 warps, 4 stages; the rest
    128x128 tiles of K 128 in 4 warps, 3 stages (BN never past N's largest power-of-two divisor).
    The rule picks the sweep's best, or within 12 %, on each of the 22.
    ``MLPERF_TORCH_FP8_TILES=BM,BN,BK,warps,stages`` sets them all instead."""
    forced = os.environ.get("MLPERF_TORCH_FP8_TILES")
    if forced:
        try:
            cfg = dict(zip(TILE_KEYS, (int(v) for v in forced.split(",")), strict=True))
        except ValueError:
            raise HarnessError(
                f"MLPERF_TORCH_FP8_TILES: {forced!r} is not five integers BM,BN,BK,warps,stages"
            ) from None
        powers = all(v > 0 and v & (v - 1) == 0 for v in (cfg["BM"], cfg["BN"], cfg["BK"]))
        if not powers or min(cfg["BM"], cfg["BN"]) < 16 or cfg["BK"] < 32:
            raise HarnessError(
                f"MLPERF_TORCH_FP8_TILES: {forced!r}: BM, BN and BK must be powers of two, BM and BN at least 16 "
                "and BK at least 32 (FP8 tensor-core products)"
            )
    elif (taps > 1 and c >= 256) or (taps == 1 and c >= 512 and n <= 512):
        cfg = {"BM": 128, "BN": 256, "BK": 128, "num_warps": 8, "num_stages": 3}
    elif c <= 64:
        cfg = {"BM": 128, "BN": 128, "BK": 64, "num_warps": 4, "num_stages": 4}
    else:
        cfg = {"BM": 128, "BN": 128, "BK": 128, "num_warps": 4, "num_stages": 3}
    while n % cfg["BN"] and cfg["BN"] > 16:
        cfg["BN"] //= 2
    return {**cfg, "GROUP_M": 8}


def conv(
    x: Any,
    w_rows: Any,
    scale: Any,
    bias: Any = None,
    z: Any = None,
    *,
    kernel: tuple[int, int] = (1, 1),
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    relu: bool = False,
    out_dtype: Any = None,
    q_inv: Any = None,
    z_scale: Any = None,
    x_inv: Any = None,
    fast_accum: bool = True,
) -> tuple[Any, Any]:
    """The convolution of ``x`` (images, H, W, C) E4M3 with ``w_rows`` (N, kh x kw x C) E4M3, times
    ``scale`` (N,) fp32, plus ``bias`` (N,), plus ``z`` (images x Ho x Wo, N), ReLU: returned as
    (images x Ho x Wo, N) rows in ``out_dtype`` (None: not written) and quantised to E4M3 with
    ``q_inv`` (a 1-element fp32 tensor; None: not written). ``z`` may be E4M3, the residual as its
    producer quantised it, with ``z_scale`` (1-element fp32). ``x`` may come in the model's dtype
    with ``x_inv`` (1-element fp32): quantised to E4M3 as the kernel reads it. ``fast_accum``
    False: the partial sums promoted to fp32 at every step (MLPERF_TORCH_FP8_FAST_ACCUM=0, as
    ``torch._scaled_mm``'s). ``kernel_options`` (MLPERF_TORCH_FP8_KERNEL) say how it reads."""
    if out_dtype is None and q_inv is None:
        raise HarnessError("fp8 conv: neither an output dtype nor a quantised output asked for")
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    images, h, w, c = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    m, n = images * ho * wo, w_rows.shape[0]
    if (z is not None and z.dtype == torch.float8_e4m3fn) != (z_scale is not None):
        raise HarnessError("fp8 conv: an E4M3 residual comes with its scale, and only an E4M3 one")
    if (x.dtype == torch.float8_e4m3fn) == (x_inv is not None):
        raise HarnessError("fp8 conv: an input in the model's dtype comes with its x_inv, and only such an input")
    if w_rows.shape[1] != kh * kw * c or (z is not None and tuple(z.shape) != (m, n)):
        raise HarnessError(
            f"fp8 conv: input {tuple(x.shape)}, weight rows {tuple(w_rows.shape)} and a {kh}x{kw} kernel do not fit"
        )
    x, w_rows = x.contiguous(), w_rows.contiguous()
    z = None if z is None else z.contiguous()
    y = None if out_dtype is None else torch.empty((m, n), dtype=out_dtype, device=x.device)
    q = None if q_inv is None else torch.empty((m, n), dtype=torch.float8_e4m3fn, device=x.device)
    cfg = tiles(m, n, c, kh * kw)
    launch = {key: cfg.pop(key) for key in ("num_warps", "num_stages")}
    grid = (-(-m // cfg["BM"]) * -(-n // cfg["BN"]),)
    options = kernel_options()
    # TMA: a 1x1 stride-1 convolution's operands are plain matrices, rows 16-byte aligned.
    tma = "tma" in options and (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and c % 16 == 0 and n % 16 == 0
    descs: list[Any] = [None] * 5
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        bm, bn, bk = cfg["BM"], cfg["BN"], cfg["BK"]
        blocks = ((x.view(m, c), [bm, bk]), (w_rows, [bn, bk]), (z, [bm, bn]), (y, [bm, bn]), (q, [bm, bn]))
        descs = [None if t is None else TensorDescriptor.from_tensor(t, block) for t, block in blocks]
    # Pointers a flag turns off are never read: any tensor stands in for them.
    _kernel(not x.is_cuda)[grid](
        x, w_rows, scale, x if bias is None else bias, x if z is None else z, scale if z_scale is None else z_scale,
        x if y is None else y, x if q is None else q, scale if q_inv is None else q_inv,
        scale if x_inv is None else x_inv, *descs,
        m, n, C=c, H=h, W=w, HO=ho, WO=wo, KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw,
        HAS_BIAS=bias is not None, HAS_Z=z is not None, Z_SCALED=z_scale is not None, RELU=relu,
        WRITE_Y=y is not None, WRITE_Q=q is not None, X_QUANT=x_inv is not None, TMA=tma,
        Z_EARLY="zearly" in options, IMPRECISE=None if fast_accum else 0, **cfg, **({} if not x.is_cuda else launch),
    )  # fmt: skip
    return y, q


def gemm(a: Any, b_rows: Any, scale: Any, bias: Any = None, z: Any = None, **epilogue: Any) -> tuple[Any, Any]:
    """``a`` (M, K) E4M3 times ``b_rows`` (N, K) E4M3 transposed, then ``conv``'s epilogue: the 1x1
    convolution of M one-pixel images."""
    if a.dim() != 2 or b_rows.dim() != 2 or b_rows.shape[1] != a.shape[1]:
        raise HarnessError(f"fp8 gemm: shapes {tuple(a.shape)} x {tuple(b_rows.shape)}^T do not multiply")
    return conv(a.reshape(a.shape[0], 1, 1, a.shape[1]), b_rows, scale, bias, z, **epilogue)
