"""One Triton kernel for an FP8 convolution's GEMM and its whole epilogue.

``Fp8Conv`` on cuBLASLt (``torch._scaled_mm``) writes the GEMM's fp16 result, then reads it again
in an inductor kernel that adds the residual, applies ReLU and writes the E4M3 copy the next FP8
layer reads: on an H200 that epilogue took 31.5 % of a batch's GPU time, more than the FP8 GEMMs
saved (BENCHMARKS.md, "resnet50 in FP8, first try"). Here the product stays in registers until
it is scaled (per output channel), biased, added to the residual, rectified and written, in the
model's dtype and/or quantised to E4M3, once.

``gemm`` runs the kernel compiled for a GPU, or through Triton's interpreter on CPU tensors, which
is how the CPU tests check it against the emulated ``scaled_mm`` path. UNTESTED ON A GPU: its
speed and its tile choice (``tiles``) are for the next H200 run (``benchmarks/gpu_fp8.py``'s
``-triton`` variants), so ``MLPERF_TORCH_FP8_GEMM`` defaults to ``cublas``.
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


def gemm_kind() -> str:
    """MLPERF_TORCH_FP8_GEMM: ``cublas`` (default: ``torch._scaled_mm``, then the epilogue as its own
    kernel) or ``triton`` (``gemm``: one kernel, the epilogue fused)."""
    kind = os.environ.get("MLPERF_TORCH_FP8_GEMM", "cublas")
    if kind not in KINDS:
        raise HarnessError(f"MLPERF_TORCH_FP8_GEMM: {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def _body(
    a_ptr, b_ptr, scale_ptr, bias_ptr, z_ptr, y_ptr, q_ptr, q_inv_ptr,
    M, N, K: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, RELU: tl.constexpr, WRITE_Y: tl.constexpr, WRITE_Q: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """C = A (M, K) x B, B given as (N, K) rows (K-major, as FP8 tensor cores read it); every
    matrix is contiguous (K a compile-time constant: a network has few, and the loop's trip count
    is then known). Then per column: times scale, plus bias; per element: plus Z, ReLU;
    written to Y and/or, times q_inv saturated to E4M3 (448), to Q. Core builtins only: Triton's
    interpreter cannot call its standard library's jit functions (cdiv, zeros) unless it was
    switched on before triton was imported."""
    pid = tl.program_id(0)
    grid_m, grid_n = (M + BM - 1) // BM, (N + BN - 1) // BN
    # Tiles in groups of GROUP_M rows of tiles, so that neighbouring programs share A's rows in L2.
    in_group = GROUP_M * grid_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)  # rows x columns passes 2^31 at batch 2048
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptrs = a_ptr + rm[:, None] * K + rk[None, :]
    b_ptrs = b_ptr + rn[None, :] * K + rk[:, None]
    acc = tl.full((BM, BN), 0.0, dtype=tl.float32)
    for k in range(0, (K + BK - 1) // BK):
        left = K - k * BK
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < left), other=0.0)
        b = tl.load(b_ptrs, mask=(rk[:, None] < left) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BK
        b_ptrs += BK
    col = rn < N
    acc = acc * tl.load(scale_ptr + rn, mask=col, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=col, other=0.0).to(tl.float32)[None, :]
    at = rm[:, None] * N + rn[None, :]
    inside = (rm[:, None] < M) & col[None, :]
    if HAS_Z:
        acc += tl.load(z_ptr + at, mask=inside, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if WRITE_Y:
        tl.store(y_ptr + at, acc.to(y_ptr.dtype.element_ty), mask=inside)
    if WRITE_Q:
        q = tl.clamp(acc * tl.load(q_inv_ptr), -448.0, 448.0)
        tl.store(q_ptr + at, q.to(q_ptr.dtype.element_ty), mask=inside)


@functools.cache
def _kernel(interpret: bool) -> Any:
    """The kernel compiled for the GPU, or run by Triton's interpreter (CPU tensors)."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_body)
    return triton.jit(_body)


TILE_KEYS = ("BM", "BN", "BK", "num_warps", "num_stages")


def tiles(m: int, n: int, k: int) -> dict[str, int]:
    """Tile sizes and launch settings for one product: 128-row tiles, columns as wide as N allows
    up to 256, K steps of 128 (64 where K is that small). A first guess for Hopper's FP8 tensor
    cores, to be swept on an H200: ``MLPERF_TORCH_FP8_TILES=BM,BN,BK,warps,stages`` sets them all
    (BN capped at N's largest power-of-two divisor up to it)."""
    forced = os.environ.get("MLPERF_TORCH_FP8_TILES")
    if forced:
        try:
            cfg = dict(zip(TILE_KEYS, (int(v) for v in forced.split(",")), strict=True))
        except ValueError:
            raise HarnessError(
                f"MLPERF_TORCH_FP8_TILES: {forced!r} is not five integers BM,BN,BK,warps,stages"
            ) from None
        while n % cfg["BN"] and cfg["BN"] > 16:
            cfg["BN"] //= 2
        return {**cfg, "GROUP_M": 8}
    bn = 256 if n % 256 == 0 else 128 if n % 128 == 0 else 64
    bk = 128 if k >= 128 else 64
    return {"BM": 128, "BN": bn, "BK": bk, "GROUP_M": 8, "num_warps": 8, "num_stages": 3 if bn == 256 else 4}


def gemm(
    a: Any,
    b_rows: Any,
    scale: Any,
    bias: Any = None,
    z: Any = None,
    *,
    relu: bool = False,
    out_dtype: Any = None,
    q_inv: Any = None,
) -> tuple[Any, Any]:
    """``a`` (M, K) E4M3 times ``b_rows`` (N, K) E4M3 transposed, times ``scale`` (N,) fp32, plus
    ``bias`` (N,), plus ``z`` (M, N), ReLU: returned in ``out_dtype`` (None: not written) and
    quantised to E4M3 with ``q_inv`` (a 1-element fp32 tensor; None: not written)."""
    if out_dtype is None and q_inv is None:
        raise HarnessError("fp8 gemm: neither an output dtype nor a quantised output asked for")
    m, k = a.shape
    n = b_rows.shape[0]
    if b_rows.shape[1] != k or (z is not None and tuple(z.shape) != (m, n)):
        raise HarnessError(f"fp8 gemm: shapes {tuple(a.shape)} x {tuple(b_rows.shape)}^T do not multiply")
    a, b_rows = a.contiguous(), b_rows.contiguous()
    z = None if z is None else z.contiguous()
    y = None if out_dtype is None else torch.empty((m, n), dtype=out_dtype, device=a.device)
    q = None if q_inv is None else torch.empty((m, n), dtype=torch.float8_e4m3fn, device=a.device)
    cfg = tiles(m, n, k)
    launch = {key: cfg.pop(key) for key in ("num_warps", "num_stages")}
    grid = (-(-m // cfg["BM"]) * -(-n // cfg["BN"]),)
    # Pointers a flag turns off are never read: any tensor stands in for them.
    _kernel(not a.is_cuda)[grid](
        a, b_rows, scale, a if bias is None else bias, a if z is None else z,
        a if y is None else y, a if q is None else q, scale if q_inv is None else q_inv,
        m, n, k,
        HAS_BIAS=bias is not None, HAS_Z=z is not None, RELU=relu, WRITE_Y=y is not None, WRITE_Q=q is not None,
        **cfg, **({} if not a.is_cuda else launch),
    )  # fmt: skip
    return y, q
