"""One Triton kernel for an FP8 convolution (any kernel size and stride) and its whole epilogue;
one for two 1x1 convolutions in a row (``chain``); one for a max-pool of E4M3 activations
(``max_pool``).

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
faster (53,351), and is the default. Option ``persist`` runs a convolution of one K step as
several tiles a program (``_conv_tile`` in a flattened loop): 1.037 of the model's speed without
it on an H100 (2026-12-06), a default too. A convolution over fewer channels than a K step (the
stem, MLPERF_TORCH_FP8_STEM=fp8) steps over its window's flattened taps (``FLAT_K``) and the
max-pool after it works on its E4M3 copy: right on an H100 over 4 channels (3 were wrong, so a GPU
refuses them), but 0.888 of the default's speed, so off. ``chain`` (option ``chain``) keeps a
block's output tile for the next block's first 1x1: right in the interpreter, wrong on an H100,
so the engine refuses it on a GPU (BENCHMARKS.md, 2026-12-06).
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


OPTIONS = ("tma", "zearly", "chain", "persist")
# zearly: resnet50 fp8 52,163 -> 53,351 images/s on an H100; tma: 51,133 (2026-12-05); persist: 53,017
# -> 54,954 (2026-12-06); chain: wrong results on an H100 (Triton 3.6), off (BENCHMARKS.md).
DEFAULT_OPTIONS = frozenset({"zearly", "persist"})


def kernel_options() -> frozenset[str]:
    """MLPERF_TORCH_FP8_KERNEL: a comma-separated subset of ``tma`` (1x1 stride-1 convolutions
    read and written through Hopper's tensor memory accelerator), ``zearly`` (the residual's
    tile read before the products), ``chain`` (a block's last 1x1 convolution and the next
    block's first in one kernel, ``chain``: wrong on an H100, so the engine refuses it on a GPU)
    and ``persist`` (a convolution of one K step runs several tiles a program, the next tile's
    loads under this one's work); ``none`` or empty: none; unset: ``DEFAULT_OPTIONS``."""
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


def _conv_tile(
    pid,
    x_ptr, w_ptr, scale_ptr, bias_ptr, z_ptr, z_scale_ptr, y_ptr, q_ptr, q_inv_ptr, x_inv_ptr,
    x_desc, w_desc, z_desc, y_desc, q_desc,
    M, N,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, Z_SCALED: tl.constexpr, RELU: tl.constexpr,
    WRITE_Y: tl.constexpr, WRITE_Q: tl.constexpr, X_QUANT: tl.constexpr, TMA: tl.constexpr, Z_EARLY: tl.constexpr,
    FLAT_K: tl.constexpr, PERSIST: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, IMPRECISE: tl.constexpr,
):  # fmt: skip
    """One tile of ``_body``'s output: BM rows (pixels) by BN columns (channels), the ``pid``-th
    in grouped order. Its parameters are ``_body``'s (a Triton kernel cannot pass on *args)."""
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
    for step in range((KH * KW * C + BK - 1) // BK if FLAT_K else KH * KW * ((C + BK - 1) // BK)):
        tap, c0 = step // ((C + BK - 1) // BK), (step % ((C + BK - 1) // BK)) * BK
        if FLAT_K:
            k = step * BK + rk  # a position in the weight row: tap k // C, channel k % C
            ih, iw = top[:, None] + (k // C // KW)[None, :], left[:, None] + (k // C % KW)[None, :]
            inside = row_in[:, None] & (k < KH * KW * C)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x = tl.load(x_ptr + ((image[:, None] * H + ih) * W + iw) * C + (k % C)[None, :], mask=inside, other=0.0)
            w = tl.load(
                w_ptr + rn[None, :] * (KH * KW * C) + k[:, None],
                mask=(k < KH * KW * C)[:, None] & col[None, :],
                other=0.0,
            )
        elif TMA:
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


_tile = triton.jit(_conv_tile)


def _body(
    x_ptr, w_ptr, scale_ptr, bias_ptr, z_ptr, z_scale_ptr, y_ptr, q_ptr, q_inv_ptr, x_inv_ptr,
    x_desc, w_desc, z_desc, y_desc, q_desc,
    M, N,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, Z_SCALED: tl.constexpr, RELU: tl.constexpr,
    WRITE_Y: tl.constexpr, WRITE_Q: tl.constexpr, X_QUANT: tl.constexpr, TMA: tl.constexpr, Z_EARLY: tl.constexpr,
    FLAT_K: tl.constexpr, PERSIST: tl.constexpr,
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
    read before the products, its latency under theirs. FLAT_K (fewer channels than BK, as a
    3-channel stem): the K steps run over the window's (tap, channel) pairs in weight-row order,
    BK at a time, instead of a tap at a time (49 taps of 3 channels would each fill one step of
    BK lanes with 3). IMPRECISE: the tensor cores' partial sums
    are promoted to fp32 every that many products (0: every one, slower; None: Triton's default,
    fast on Hopper). The layer's shape is compile-time (a network has few; loops and index
    arithmetic then fold), the batch is not. Core builtins only: Triton's interpreter cannot call
    its standard library's jit functions (cdiv, zeros) unless it was switched on before triton
    was imported."""
    if PERSIST:
        # Tiles a program strided by the grid, the tile loop flattened with the K loop: the next
        # tile's loads are issued under this one's products and epilogue.
        tiles = ((M + BM - 1) // BM) * ((N + BN - 1) // BN)
        for pid in tl.range(tl.program_id(0), tiles, tl.num_programs(0), flatten=True):
            _tile(pid, x_ptr, w_ptr, scale_ptr, bias_ptr, z_ptr, z_scale_ptr, y_ptr, q_ptr, q_inv_ptr,
                x_inv_ptr, x_desc, w_desc, z_desc, y_desc, q_desc, M, N, C, H, W, HO, WO, KH, KW, SH, SW, PH, PW,
                HAS_BIAS, HAS_Z, Z_SCALED, RELU, WRITE_Y, WRITE_Q, X_QUANT, TMA, Z_EARLY, FLAT_K, PERSIST,
                BM, BN, BK, GROUP_M, IMPRECISE)  # fmt: skip
    else:
        _tile(tl.program_id(0), x_ptr, w_ptr, scale_ptr, bias_ptr, z_ptr, z_scale_ptr, y_ptr, q_ptr, q_inv_ptr,
            x_inv_ptr, x_desc, w_desc, z_desc, y_desc, q_desc, M, N, C, H, W, HO, WO, KH, KW, SH, SW, PH, PW,
            HAS_BIAS, HAS_Z, Z_SCALED, RELU, WRITE_Y, WRITE_Q, X_QUANT, TMA, Z_EARLY, FLAT_K, PERSIST,
            BM, BN, BK, GROUP_M, IMPRECISE)  # fmt: skip


@functools.cache
def _kernel(body: Any, interpret: bool) -> Any:
    """A kernel compiled for the GPU, or run by Triton's interpreter (CPU tensors). The
    interpreter cannot call a jit function (``_tile``) from the kernel: it runs the kernel with
    each such global replaced by the Python function under it."""
    if interpret:
        import types

        from triton.runtime.interpreter import InterpretedFunction

        plain = {k: v.fn if isinstance(v, triton.runtime.JITFunction) else v for k, v in body.__globals__.items()}
        fn = types.FunctionType(body.__code__, plain, body.__name__, body.__defaults__, body.__closure__)
        fn.__annotations__ = body.__annotations__
        return InterpretedFunction(fn)
    return triton.jit(body)


TILE_KEYS = ("BM", "BN", "BK", "num_warps", "num_stages")


def _forced_tiles(variable: str) -> dict[str, int] | None:
    """``variable``'s BM,BN,BK,warps,stages, checked; None where it is unset."""
    forced = os.environ.get(variable)
    if not forced:
        return None
    try:
        cfg = dict(zip(TILE_KEYS, (int(v) for v in forced.split(",")), strict=True))
    except ValueError:
        raise HarnessError(f"{variable}: {forced!r} is not five integers BM,BN,BK,warps,stages") from None
    powers = all(v > 0 and v & (v - 1) == 0 for v in (cfg["BM"], cfg["BN"], cfg["BK"]))
    if not powers or min(cfg["BM"], cfg["BN"]) < 16 or cfg["BK"] < 32:
        raise HarnessError(
            f"{variable}: {forced!r}: BM, BN and BK must be powers of two, BM and BN at least 16 "
            "and BK at least 32 (FP8 tensor-core products)"
        )
    return cfg


def tiles(m: int, n: int, c: int, taps: int = 1) -> dict[str, int]:
    """Tile sizes and launch settings for one convolution (``c`` input channels, ``taps`` kernel
    positions, ``n`` output channels), from the sweep of ResNet-50's 22 shapes at batch 1024 on
    an H200 (2026-12-05, ``benchmarks/gpu_fp8.py --gemms wide``, BENCHMARKS.md): deep products
    (3x3 over 256 or more channels, 1x1 over 512 or more into at most 512) take 128x256 tiles of
    K 128 in 8 warps; 64-channel inputs 128x128 tiles of K 64 in 4 warps, 4 stages; the rest
    128x128 tiles of K 128 in 4 warps, 3 stages (BN never past N's largest power-of-two divisor).
    The rule picks the sweep's best, or within 12 %, on each of the 22.
    ``MLPERF_TORCH_FP8_TILES=BM,BN,BK,warps,stages`` sets them all instead."""
    forced = _forced_tiles("MLPERF_TORCH_FP8_TILES")
    if forced:
        cfg = forced
    elif (taps > 1 and c >= 256) or (taps == 1 and c >= 512 and n <= 512):
        cfg = {"BM": 128, "BN": 256, "BK": 128, "num_warps": 8, "num_stages": 3}
    elif c <= 64:
        cfg = {"BM": 128, "BN": 128, "BK": 64, "num_warps": 4, "num_stages": 4}
    else:
        cfg = {"BM": 128, "BN": 128, "BK": 128, "num_warps": 4, "num_stages": 3}
    while n % cfg["BN"] and cfg["BN"] > 16:
        cfg["BN"] //= 2
    return {**cfg, "GROUP_M": 8}


def _check_epilogue(what: str, out_dtype: Any, q_inv: Any, z: Any, z_scale: Any) -> None:
    if out_dtype is None and q_inv is None:
        raise HarnessError(f"fp8 {what}: neither an output dtype nor a quantised output asked for")
    if (z is not None and z.dtype == torch.float8_e4m3fn) != (z_scale is not None):
        raise HarnessError(f"fp8 {what}: an E4M3 residual comes with its scale, and only an E4M3 one")


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
    _check_epilogue("conv", out_dtype, q_inv, z, z_scale)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    images, h, w, c = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    m, n = images * ho * wo, w_rows.shape[0]
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
    consts, launch = conv_constants(
        (images, h, w, c), n, kernel, stride, padding, has_bias=bias is not None, has_z=z is not None,
        z_scaled=z_scale is not None, relu=relu, write_y=y is not None, write_q=q is not None,
        x_quant=x_inv is not None, fast_accum=fast_accum, cuda=x.is_cuda,
    )  # fmt: skip
    n_tiles = -(-m // consts["BM"]) * -(-n // consts["BN"])
    grid = (persistent_grid(n_tiles, x.device) if consts["PERSIST"] else n_tiles,)
    descs: list[Any] = [None] * 5
    if consts["TMA"]:
        from triton.tools.tensor_descriptor import TensorDescriptor

        bm, bn, bk = consts["BM"], consts["BN"], consts["BK"]
        blocks = ((x.view(m, c), [bm, bk]), (w_rows, [bn, bk]), (z, [bm, bn]), (y, [bm, bn]), (q, [bm, bn]))
        descs = [None if t is None else TensorDescriptor.from_tensor(t, block) for t, block in blocks]
    # Pointers a flag turns off are never read: any tensor stands in for them.
    _kernel(_body, not x.is_cuda)[grid](
        x, w_rows, scale, x if bias is None else bias, x if z is None else z, scale if z_scale is None else z_scale,
        x if y is None else y, x if q is None else q, scale if q_inv is None else q_inv,
        scale if x_inv is None else x_inv, *descs, m, n, **consts, **({} if not x.is_cuda else launch),
    )  # fmt: skip
    return y, q


PROGRAMS_PER_SM = 2  # what the persistent kernels' registers allow (fp8_ptxas: 254 a thread, 4 warps)


def persistent_grid(tiles: int, device: Any) -> int:
    """Programs for ``tiles`` tiles run persistently: as many as the GPU holds at once."""
    return min(tiles, torch.cuda.get_device_properties(device).multi_processor_count * PROGRAMS_PER_SM)


def conv_constants(
    x_shape: tuple[int, int, int, int],
    n: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    *,
    has_bias: bool,
    has_z: bool,
    z_scaled: bool,
    relu: bool,
    write_y: bool,
    write_q: bool,
    x_quant: bool,
    fast_accum: bool,
    cuda: bool = True,
) -> tuple[dict[str, Any], dict[str, int]]:
    """``_body``'s compile-time arguments and launch settings (warps, stages) for a convolution of
    an (images, H, W, C) input into ``n`` channels, on a GPU or (``cuda`` False) in Triton's
    interpreter: ``conv`` launches with them, ``fp8_ptxas`` compiles with them."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    images, h, w, c = x_shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    cfg = tiles(images * ho * wo, n, c, kh * kw)
    launch = {key: cfg.pop(key) for key in ("num_warps", "num_stages")}
    options = kernel_options()
    # TMA: a 1x1 stride-1 convolution's operands are plain matrices, rows 16-byte aligned.
    tma = "tma" in options and (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and c % 16 == 0 and n % 16 == 0
    # Persistent where the K loop has one step: nothing else overlaps a tile's loads with work
    # (two programs an SM at their 254 registers); fp8_ptxas: pipelined so, without spills at 2
    # stages, where the deeper ones spilled. Not in the interpreter: its loops cannot run to a
    # bound known only at launch (Triton 3.6), so there a program keeps one tile.
    flat_k = c < cfg["BK"] and not tma
    if flat_k and c % 4 and cuda:
        # The interpreter's output was right; the GPU's was not (an H100, Triton 3.6, 2026-12-06).
        raise HarnessError(
            f"fp8 conv: a {c}-channel input: on a GPU the flattened window (fewer channels than a K step) "
            "takes a multiple of 4 channels (3 gave wrong results on an H100); pad the channels with zeros"
        )
    steps = -(-kh * kw * c // cfg["BK"]) if flat_k else kh * kw * -(-c // cfg["BK"])
    persist = "persist" in options and steps == 1 and not tma and cuda
    if persist:
        launch["num_stages"] = 2
    consts = {
        "C": c, "H": h, "W": w, "HO": ho, "WO": wo, "KH": kh, "KW": kw, "SH": sh, "SW": sw, "PH": ph, "PW": pw,
        "HAS_BIAS": has_bias, "HAS_Z": has_z, "Z_SCALED": z_scaled, "RELU": relu, "WRITE_Y": write_y,
        "WRITE_Q": write_q, "X_QUANT": x_quant, "TMA": tma, "Z_EARLY": "zearly" in options, "FLAT_K": flat_k,
        "PERSIST": persist, "IMPRECISE": None if fast_accum else 0, **cfg,
    }  # fmt: skip
    return consts, launch


def gemm(a: Any, b_rows: Any, scale: Any, bias: Any = None, z: Any = None, **epilogue: Any) -> tuple[Any, Any]:
    """``a`` (M, K) E4M3 times ``b_rows`` (N, K) E4M3 transposed, then ``conv``'s epilogue: the 1x1
    convolution of M one-pixel images."""
    if a.dim() != 2 or b_rows.dim() != 2 or b_rows.shape[1] != a.shape[1]:
        raise HarnessError(f"fp8 gemm: shapes {tuple(a.shape)} x {tuple(b_rows.shape)}^T do not multiply")
    return conv(a.reshape(a.shape[0], 1, 1, a.shape[1]), b_rows, scale, bias, z, **epilogue)


def _pool_body(
    x_ptr, y_ptr, P,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
    K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Y (P = images x HO x WO, C) = the KxK max-pool (stride S, padding PAD) of X (images, H, W,
    C), both E4M3: the window's largest value, compared in fp32 (exact: E4M3 values are fp32
    values), outside the image no candidate."""
    rp = (tl.program_id(0) * BP + tl.arange(0, BP)).to(tl.int64)
    rc = tl.arange(0, BC)
    image, pixel = rp // (HO * WO), rp % (HO * WO)
    top, left = (pixel // WO) * S - PAD, (pixel % WO) * S - PAD
    channel = rc < C
    best = tl.full((BP, BC), float("-inf"), dtype=tl.float32)
    for tap in range(K * K):
        ih, iw = top + tap // K, left + tap % K
        inside = (rp < P) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        mask = inside[:, None] & channel[None, :]
        v = tl.load(x_ptr + ((image * H + ih) * W + iw)[:, None] * C + rc[None, :], mask=mask, other=0.0)
        best = tl.maximum(best, tl.where(mask, v.to(tl.float32), float("-inf")))
    written = (rp < P)[:, None] & channel[None, :]
    tl.store(y_ptr + rp[:, None] * C + rc[None, :], best.to(y_ptr.dtype.element_ty), mask=written)


def max_pool(x: Any, kernel: int, stride: int, padding: int) -> Any:
    """The max-pool of ``x`` (images, H, W, C) E4M3, returned as (images, Ho, Wo, C) E4M3: on an
    E4M3 tensor because rounding is monotonic, so the largest of the rounded values is the
    rounding of the largest (the pool of a quantised tensor is the quantised pool, exactly)."""
    if x.dtype != torch.float8_e4m3fn or x.dim() != 4:
        raise HarnessError(f"fp8 max-pool: wants an (images, H, W, C) E4M3 tensor, got {x.dtype} {tuple(x.shape)}")
    images, h, w, c = x.shape
    ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    x = x.contiguous()
    y = torch.empty((images, ho, wo, c), dtype=x.dtype, device=x.device)
    p, bc = images * ho * wo, triton.next_power_of_2(c)
    bp = max(1, 4096 // bc)  # a tile of about 4096 values
    _kernel(_pool_body, not x.is_cuda)[(-(-p // bp),)](
        x, y, p, C=c, H=h, W=w, HO=ho, WO=wo, K=kernel, S=stride, PAD=padding, BP=bp, BC=bc
    )
    return y


def _chain_body(
    x_ptr, w1_ptr, s1_ptr, b1_ptr, z_ptr, zs_ptr, q1_ptr, q1_inv_ptr,
    w2_ptr, s2_ptr, b2_ptr, y2_ptr, q2_ptr, q2_inv_ptr,
    M,
    K1: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
    HAS_B1: tl.constexpr, HAS_Z: tl.constexpr, Z_SCALED: tl.constexpr, RELU1: tl.constexpr,
    HAS_B2: tl.constexpr, RELU2: tl.constexpr, WRITE_Y2: tl.constexpr, WRITE_Q2: tl.constexpr,
    BM: tl.constexpr, BN1: tl.constexpr, BK: tl.constexpr, BN2: tl.constexpr, IMPRECISE: tl.constexpr,
    SECOND_F16: tl.constexpr,
):  # fmt: skip
    """Two 1x1 convolutions in a row, the first's output never read back from memory: Q1 (M, N1)
    = E4M3 of (X (M, K1) W1^T times s1, plus b1, plus Z (times its scale), ReLU) times q1_inv;
    then (Q1 W2^T times s2, plus b2, ReLU) (M, N2) to Y2 and/or, times q2_inv, E4M3 to Q2. A
    program takes BM rows through all N1 columns, BN1 at a time: each chunk's Q1 tile is
    written (the residual its block's successor adds) and multiplied at once by its rows of W2,
    the (BM, N2) product accumulating in registers. ResNet's block output and the next block's
    first convolution: that output (the largest tensors of the network) is written once and
    never read back for the 1x1 that follows it."""
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    row_in = rm < M
    rk = tl.arange(0, BK)
    rn2 = tl.arange(0, BN2)
    col2 = rn2 < N2
    acc2 = tl.full((BM, BN2), 0.0, dtype=tl.float32)
    for chunk in range(N1 // BN1):
        rn1 = chunk * BN1 + tl.arange(0, BN1)
        at1 = rm[:, None] * N1 + rn1[None, :]
        if HAS_Z:
            z = tl.load(z_ptr + at1, mask=row_in[:, None], other=0.0).to(tl.float32)
        acc1 = tl.full((BM, BN1), 0.0, dtype=tl.float32)
        for step in range((K1 + BK - 1) // BK):
            k = step * BK + rk
            x = tl.load(x_ptr + rm[:, None] * K1 + k[None, :], mask=row_in[:, None] & (k < K1)[None, :], other=0.0)
            w = tl.load(w1_ptr + rn1[None, :] * K1 + k[:, None], mask=(k < K1)[:, None], other=0.0)
            acc1 = tl.dot(x, w, acc1, max_num_imprecise_acc=IMPRECISE)
        acc1 = acc1 * tl.load(s1_ptr + rn1)[None, :]
        if HAS_B1:
            acc1 += tl.load(b1_ptr + rn1).to(tl.float32)[None, :]
        if HAS_Z:
            acc1 += z * tl.load(zs_ptr) if Z_SCALED else z
        if RELU1:
            acc1 = tl.maximum(acc1, 0.0)
        q1 = tl.clamp(acc1 * tl.load(q1_inv_ptr), -448.0, 448.0).to(q1_ptr.dtype.element_ty)
        tl.store(q1_ptr + at1, q1, mask=row_in[:, None])
        w2 = tl.load(w2_ptr + rn2[None, :] * N1 + rn1[:, None], mask=col2[None, :], other=0.0)
        if SECOND_F16:
            acc2 = tl.dot(q1.to(tl.float16), w2.to(tl.float16), acc2)
        else:
            acc2 = tl.dot(q1, w2, acc2, max_num_imprecise_acc=IMPRECISE)
    acc2 = acc2 * tl.load(s2_ptr + rn2, mask=col2, other=0.0)[None, :]
    if HAS_B2:
        acc2 += tl.load(b2_ptr + rn2, mask=col2, other=0.0).to(tl.float32)[None, :]
    if RELU2:
        acc2 = tl.maximum(acc2, 0.0)
    at2 = rm[:, None] * N2 + rn2[None, :]
    written = row_in[:, None] & col2[None, :]
    if WRITE_Y2:
        tl.store(y2_ptr + at2, acc2.to(y2_ptr.dtype.element_ty), mask=written)
    if WRITE_Q2:
        q2 = tl.clamp(acc2 * tl.load(q2_inv_ptr), -448.0, 448.0).to(q2_ptr.dtype.element_ty)
        tl.store(q2_ptr + at2, q2, mask=written)


def chain_tiles(k1: int, n1: int, n2: int) -> dict[str, int]:
    """``chain``'s rows a program (BM), first product's columns a step (BN, BN1 in the kernel), K
    step and launch settings: 64 rows (the second product's (64, N2) sum stays in registers),
    128 columns where N1 allows, K 64, 8 warps, 3 stages: of the settings compiled for sm_90a
    (``fp8_ptxas``, Triton 3.6, 2026-12-05), the one without register spills on all seven of
    ResNet-50's pairs (K 128 or 4 warps spilled on some); not yet timed on a GPU.
    ``MLPERF_TORCH_FP8_CHAIN_TILES=BM,BN,BK,warps,stages`` sets them instead."""
    forced = _forced_tiles("MLPERF_TORCH_FP8_CHAIN_TILES")
    if forced:
        return forced
    return {"BM": 64, "BN": 128 if n1 % 128 == 0 else 64, "BK": 64, "num_warps": 8, "num_stages": 3}


def chain_second() -> str:
    """MLPERF_TORCH_FP8_CHAIN_SECOND: ``fp8`` (default) or ``fp16``, the dtype of ``chain``'s
    second product. The E4M3 values are exact in fp16 and the sums fp32 either way, so both give
    the same outputs; fp16 takes Triton's register-operand path that FlashAttention runs, where
    fp8's gave wrong results on an H100 and crashed CUDA 13.0's ptxas (which compiles fp16's),
    2026-12-06. Not yet run on a GPU."""
    second = os.environ.get("MLPERF_TORCH_FP8_CHAIN_SECOND", "fp8")
    if second not in ("fp8", "fp16"):
        raise HarnessError(f"MLPERF_TORCH_FP8_CHAIN_SECOND: {second!r} is not fp8 or fp16")
    return second


def chain_fits(k1: int, n1: int, n2: int) -> bool:
    """Whether ``chain`` takes a K1 -> N1 -> N2 pair: N1 whole steps of its tiles, N2 one power-of-two tile."""
    return n1 % chain_tiles(k1, n1, n2)["BN"] == 0 and n2 >= 16 and not n2 & (n2 - 1)


def chain(
    x: Any,
    w1_rows: Any,
    scale1: Any,
    q1_inv: Any,
    w2_rows: Any,
    scale2: Any,
    *,
    bias1: Any = None,
    z: Any = None,
    z_scale: Any = None,
    relu1: bool = True,
    bias2: Any = None,
    relu2: bool = True,
    out2_dtype: Any = None,
    q2_inv: Any = None,
    fast_accum: bool = True,
) -> tuple[Any, Any, Any]:
    """``x`` (M, K1) E4M3 through the 1x1 convolution ``w1_rows`` (N1, K1) and its epilogue
    (``conv``'s: scale1, bias1, residual ``z`` (M, N1), ReLU) quantised with ``q1_inv`` to Q1, then
    Q1 through ``w2_rows`` (N2, N1) and its epilogue: returns (Q1, Y2 in ``out2_dtype`` or None, Q2
    quantised with ``q2_inv`` or None), as ``conv`` twice would, in one kernel (``_chain_body``).
    Right in Triton's interpreter; on an H100 (Triton 3.6, 2026-12-06) 16 % of Q1 came out wrong
    on the 64 -> 256 -> 64 pair and Y2 on the larger ones, at 3 pipeline stages and at 1, and CUDA
    13.0's ptxas crashed on the 64-channel pairs: a compiler's fault or this kernel's, not yet
    found (test_harness_gpu's xfail says when it passes)."""
    m, k1 = x.shape
    n1, n2 = w1_rows.shape[0], w2_rows.shape[0]
    if w1_rows.shape[1] != k1 or w2_rows.shape[1] != n1 or (z is not None and tuple(z.shape) != (m, n1)):
        raise HarnessError(
            f"fp8 chain: input {tuple(x.shape)}, weight rows {tuple(w1_rows.shape)} and {tuple(w2_rows.shape)} "
            "do not follow one another"
        )
    _check_epilogue("chain", out2_dtype, q2_inv, z, z_scale)
    consts, launch = chain_constants(
        k1, n1, n2, has_b1=bias1 is not None, has_z=z is not None, z_scaled=z_scale is not None, relu1=relu1,
        has_b2=bias2 is not None, relu2=relu2, write_y2=out2_dtype is not None, write_q2=q2_inv is not None,
        fast_accum=fast_accum,
    )  # fmt: skip
    x, w1_rows, w2_rows = x.contiguous(), w1_rows.contiguous(), w2_rows.contiguous()
    z = None if z is None else z.contiguous()
    q1 = torch.empty((m, n1), dtype=torch.float8_e4m3fn, device=x.device)
    y2 = None if out2_dtype is None else torch.empty((m, n2), dtype=out2_dtype, device=x.device)
    q2 = None if q2_inv is None else torch.empty((m, n2), dtype=torch.float8_e4m3fn, device=x.device)
    _kernel(_chain_body, not x.is_cuda)[(-(-m // consts["BM"]),)](
        x, w1_rows, scale1, x if bias1 is None else bias1, x if z is None else z,
        scale1 if z_scale is None else z_scale, q1, q1_inv,
        w2_rows, scale2, x if bias2 is None else bias2, x if y2 is None else y2, x if q2 is None else q2,
        scale2 if q2_inv is None else q2_inv, m, **consts, **(launch if x.is_cuda else {}),
    )  # fmt: skip
    return q1, y2, q2


def chain_constants(
    k1: int,
    n1: int,
    n2: int,
    *,
    has_b1: bool,
    has_z: bool,
    z_scaled: bool,
    relu1: bool,
    has_b2: bool,
    relu2: bool,
    write_y2: bool,
    write_q2: bool,
    fast_accum: bool,
) -> tuple[dict[str, Any], dict[str, int]]:
    """``_chain_body``'s compile-time arguments and launch settings for a K1 -> N1 -> N2 pair:
    ``chain`` launches with them, ``fp8_ptxas`` compiles with them."""
    cfg = chain_tiles(k1, n1, n2)
    if not chain_fits(k1, n1, n2):
        raise HarnessError(
            f"fp8 chain: {n1} -> {n2} channels: N1 a multiple of {cfg['BN']} and N2 a power of two wanted"
        )
    consts = {
        "K1": k1, "N1": n1, "N2": n2, "HAS_B1": has_b1, "HAS_Z": has_z, "Z_SCALED": z_scaled, "RELU1": relu1,
        "HAS_B2": has_b2, "RELU2": relu2, "WRITE_Y2": write_y2, "WRITE_Q2": write_q2, "BM": cfg["BM"],
        "BN1": cfg["BN"], "BK": cfg["BK"], "BN2": n2, "IMPRECISE": None if fast_accum else 0,
        "SECOND_F16": chain_second() == "fp16",
    }  # fmt: skip
    return consts, {key: cfg[key] for key in ("num_warps", "num_stages")}
