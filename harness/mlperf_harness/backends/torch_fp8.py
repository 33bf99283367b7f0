"""FP8 (E4M3) convolutions for the pytorch image path, over channels-last activations viewed as
[N*H*W, C].

Weights are quantised per output channel, activations per tensor with scales from calibration
(the largest magnitude seen on the calibration samples, ``calibrate``). Which convolutions become
FP8 is decided per Conv node by its shape (``eligible``): in mode ``all`` (the default) every one
that fits, in mode ``1x1`` the 1x1 ones only; input and output channels a multiple of 16
(cuBLASLt's FP8 rule), so a 3- or 4-channel stem stays in half precision unless ``stem_mode``
is fp8 (fp8_gemm's kernel has no such rule), and the classifier (a Gemm) always does. Where the
next convolution is FP8 too, a convolution's epilogue also writes the quantised copy that
convolution reads (``emit``), so no separate quantise pass; a max-pool between FP8 layers (the
stem's) then pools that copy (``Fp8MaxPool``).

On the CPU, ``scaled_mm`` emulates ``torch._scaled_mm`` exactly (the FP8 values dequantised and
multiplied in fp32), so the rewrite and its scales are tested here against the fp32 model.

On a GPU the convolution (an implicit GEMM: no im2col) and its whole epilogue are one Triton
kernel by default (``fp8_gemm``; checked here through Triton's interpreter, run on an H100 and
an H200 by ``benchmarks/gpu_fp8.py``). With ``MLPERF_TORCH_FP8_GEMM=cublas`` (the CPU's default:
there it is the emulation) the GEMM is ``torch._scaled_mm`` over im2col patches, its
configuration probed at load (``gemm_plan``: rowwise scales with an fp16 result, else bf16, else
tensorwise with an fp32 result), then the epilogue as an inductor kernel.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..errors import HarnessError

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite E4M3 value
# E4M3's half-ulp relative rounding error for normal values (3 mantissa bits) and its absolute
# error below the smallest normal (2^-6; subnormals are spaced 2^-9), in units of the scale.
E4M3_REL = 2.0**-4
E4M3_SUBNORMAL_ABS = 2.0**-10
MODES = ("1x1", "all")
RESIDUALS = ("fp16", "fp8")
STEMS = ("fp16", "fp8")
RESIDUAL = ".residual"  # calibration: the residual's range of an add-fused convolution, under its name + this
ALIGN = 16  # cuBLASLt's FP8 GEMMs want K and N multiples of 16


def conv_mode() -> str:
    """MLPERF_TORCH_FP8_CONVS: ``all`` (default: every eligible convolution, the kxk ones too:
    fp8_gemm's implicit GEMM, or im2col under cuBLASLt) or ``1x1`` (the 1x1 ones only; the
    others stay in cuDNN's fused half precision). ``all`` measured fastest on an H100 and an H200
    with fp8_gemm (BENCHMARKS.md)."""
    mode = os.environ.get("MLPERF_TORCH_FP8_CONVS", "all")
    if mode not in MODES:
        raise HarnessError(f"MLPERF_TORCH_FP8_CONVS: {mode!r} is not one of {', '.join(MODES)}")
    return mode


def residual_mode() -> str:
    """MLPERF_TORCH_FP8_RESIDUAL: ``fp8`` (default: a residual an FP8 convolution adds is read as
    the E4M3 copy its producer writes, with the residual's calibrated scale: a block output then
    is written once, in E4M3, where only FP8 convolutions read it; ResNet-50's residual adds move
    about half the bytes of a batch) or ``fp16`` (read in the model's dtype: one rounding fewer,
    4.3 % against 4.8 % pooled-feature error on an H200, BENCHMARKS.md)."""
    mode = os.environ.get("MLPERF_TORCH_FP8_RESIDUAL", "fp8")
    if mode not in RESIDUALS:
        raise HarnessError(f"MLPERF_TORCH_FP8_RESIDUAL: {mode!r} is not one of {', '.join(RESIDUALS)}")
    return mode


def stem_mode() -> str:
    """MLPERF_TORCH_FP8_STEM: ``fp16`` (default: a convolution whose channels break cuBLASLt's
    FP8 rule of 16, ResNet-50's 3-channel 7x7 stem, stays in cuDNN's half precision) or ``fp8``
    (it runs in FP8 too, through fp8_gemm's kernel, which has no such rule: its fp16 input
    quantised as read, its E4M3 output pooled as it is, ``Fp8MaxPool``). Right on an H100 but
    0.888 of the default's speed there (2026-12-06, BENCHMARKS.md), so fp16 stays the default."""
    mode = os.environ.get("MLPERF_TORCH_FP8_STEM", "fp16")
    if mode not in STEMS:
        raise HarnessError(f"MLPERF_TORCH_FP8_STEM: {mode!r} is not one of {', '.join(STEMS)}")
    return mode


# --- quantisation math ----------------------------------------------------------------------------
def quantize(x: Any, inv_scale: Any) -> Any:
    """``x / scale`` saturated to E4M3's range and rounded to E4M3 (a plain cast would make NaN
    of what overflows)."""
    return (x.float() * inv_scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


def dequantize(q: Any, scale: Any) -> Any:
    return q.float() * scale


def amax_scale(amax: Any) -> Any:
    """The scale that maps ``amax`` to E4M3's largest value (never 0: an all-zero tensor keeps 1)."""
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def calibrated_scale(amax: dict[str, float], key: str) -> float:
    """The per-tensor scale of a calibrated range (``calibrate``'s ``key``)."""
    return float(amax_scale(torch.tensor(amax[key])))


def weight_scales(w: Any) -> Any:
    """Per-output-channel scales of a (K, ...) weight."""
    return amax_scale(w.detach().float().reshape(len(w), -1).abs().amax(dim=1))


def scaled_mm(a: Any, b: Any, scale_b: Any, bias: Any, out_dtype: Any, fast_accum: bool = True) -> Any:
    """a (M, K) E4M3 row-major times b (K, N) E4M3 column-major, times ``scale_b`` (1, N) fp32,
    plus ``bias`` (N,): ``torch._scaled_mm`` with rowwise scales on a GPU (the rows' scales are
    ones: the activation's per-tensor scale is folded into ``scale_b``); on the CPU the same
    product of the dequantised values in fp32."""
    if a.is_cuda:
        return PLANS[(a.device, out_dtype, bias is not None)](a, b, scale_b, bias, out_dtype, fast_accum)
    y = (a.float() @ b.float()) * scale_b
    return (y if bias is None else y + bias.float()).to(out_dtype)


def _ones(rows: int, device: Any) -> Any:
    """The rows' scales (ones); inside a whole-model torch.compile made in the graph instead."""
    if torch.compiler.is_compiling():
        return torch.ones((rows, 1), dtype=torch.float32, device=device)
    return _cached_ones(rows, device)


@functools.cache
def _cached_ones(rows: int, device: Any) -> Any:
    return torch.ones((rows, 1), dtype=torch.float32, device=device)


def _rowwise(a: Any, b: Any, scale_b: Any, bias: Any, out_dtype: Any, fast: bool) -> Any:
    one = _ones(a.shape[0], a.device)
    return torch._scaled_mm(a, b, one, scale_b, bias=bias, out_dtype=out_dtype, use_fast_accum=fast)


def _rowwise_bf16(a: Any, b: Any, scale_b: Any, bias: Any, out_dtype: Any, fast: bool) -> Any:
    bias16 = None if bias is None else bias.to(torch.bfloat16)
    return _rowwise(a, b, scale_b, bias16, torch.bfloat16, fast).to(out_dtype)


def _tensorwise(a: Any, b: Any, scale_b: Any, bias: Any, out_dtype: Any, fast: bool) -> Any:
    one = _ones(1, a.device).reshape(())
    y = torch._scaled_mm(a, b, one, one, out_dtype=torch.float32, use_fast_accum=fast) * scale_b
    return (y if bias is None else y + bias.float()).to(out_dtype)


PLANS: dict[tuple[Any, Any, bool], Callable[..., Any]] = {}  # (device, out dtype, bias) -> _gemm_plan's choice


def gemm_plan(device: Any, out_dtype: Any, with_bias: bool) -> None:
    """Probe once (eagerly, outside any CUDA graph capture or compile) the ``_scaled_mm`` call
    ``scaled_mm`` makes for this device, output dtype and bias."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # scaled_mm looks plans up by a tensor's device: indexed
        device = torch.device("cuda", torch.cuda.current_device())
    key = (device, out_dtype, with_bias)
    if key not in PLANS:
        PLANS[key] = _gemm_plan(device, out_dtype, with_bias)


def _gemm_plan(device: Any, out_dtype: Any, with_bias: bool) -> Callable[..., Any]:
    """The first ``_scaled_mm`` configuration this GPU and torch run and get right, tried once on
    a small product against the emulation: rowwise scales with the model's dtype out (cuBLASLt
    on sm90 with CUDA >= 12.9), rowwise with bf16 out (torch's CUTLASS kernel), else tensorwise
    with an fp32 result scaled afterwards (always supported, slower)."""
    gen = torch.Generator().manual_seed(0)
    a = quantize(torch.randn(64, 32, generator=gen), 1.0).to(device)
    b = quantize(torch.randn(48, 32, generator=gen), 1.0).to(device).t()
    scale = (torch.rand(1, 48, generator=gen) + 0.5).to(device)
    bias = torch.randn(48, generator=gen).to(device, out_dtype) if with_bias else None
    want = scaled_mm(a.cpu(), b.cpu(), scale.cpu(), None if bias is None else bias.cpu(), torch.float32)
    errors = []
    for plan in (_rowwise, _rowwise_bf16, _tensorwise):
        try:
            got = plan(a, b, scale, bias, out_dtype, True).float().cpu()
        except (RuntimeError, ValueError) as exc:
            errors.append(f"{plan.__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        if torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max())):
            return plan
        errors.append(f"{plan.__name__}: wrong result")
    raise HarnessError(f"fp8: no torch._scaled_mm configuration runs on {device}: {'; '.join(errors)}")


# --- im2col over channels-last activations -----------------------------------------------------------
def _bytes(x: Any) -> Any:
    """FP8 tensors as bytes for the data movement (padding, strided views) FP8 may lack kernels for."""
    return x.view(torch.uint8) if x.dtype == FP8 else x


def patches(xh: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Any:
    """(N, H, W, C) -> (N, Ho, Wo, kh*kw*C), the (kh, kw, C) order of ``flat_weight``; a 1x1
    kernel is its input's strided rows, without copying where the stride is 1."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    dtype = xh.dtype
    x = _bytes(xh)
    if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
        x = x[:, ::sh, ::sw, :]
    else:
        if ph or pw:
            x = nn.functional.pad(x, (0, 0, pw, pw, ph, ph))
        n, h, w, c = x.shape
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        s = x.stride()
        x = x.as_strided((n, ho, wo, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3]))
        x = x.reshape(n, ho, wo, kh * kw * c)
    return x.view(dtype) if dtype == FP8 else x


def flat_weight(w: Any) -> Any:
    """(K, C, kh, kw) -> (K, kh*kw*C), matching ``patches``."""
    return w.permute(0, 2, 3, 1).reshape(len(w), -1)


# --- the FP8 convolution ---------------------------------------------------------------------------------
def _epilogue(
    y: Any, z: Any, relu: bool, dtype: Any, emit_inv: Any, keep: bool, z_scale: Any = None
) -> tuple[Any, Any]:
    """GEMM result (+ residual, times ``z_scale`` where it is E4M3) (ReLU) in ``dtype``, and its
    E4M3 copy for the next FP8 layer."""
    if z is not None and z_scale is not None:
        z = z.float() * z_scale
    y = y.float() if z is None else y.float() + z.float()
    if relu:
        y = torch.relu(y)
    q = None if emit_inv is None else quantize(y, emit_inv)
    return (y.to(dtype) if keep else None), q


@functools.cache
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One process-wide compile of ``fn`` (dynamic shapes: the layers' many shapes share it)."""
    import torch._dynamo

    # Each flag combination is a guard of the one function: room for them all.
    torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    return torch.compile(fn, dynamic=True)


class Fp8Conv(nn.Module):
    """A convolution (+ bias) (+ residual add) (+ ReLU) as an E4M3 GEMM: called as the module it
    replaces, ``(x)`` or ``(x, z)``, with NCHW tensors in channels-last memory. ``x`` may already
    be E4M3 (a previous FP8 layer's ``emit``); then the input scale is the one that made it. With
    ``emit_scale`` set it returns ``(y, q)``: the output and its E4M3 copy (``y`` None when only
    FP8 layers read it)."""

    def __init__(self, conv: Any, in_scale: float, relu: bool, add: bool, dtype: Any, compiled: bool) -> None:
        super().__init__()
        w = conv.weight.detach().float()
        self.kernel = (int(w.shape[2]), int(w.shape[3]))
        self.stride = (int(conv.stride[0]), int(conv.stride[1]))
        self.padding = (int(conv.padding[0]), int(conv.padding[1]))
        self.relu, self.add, self.dtype = relu, add, dtype
        w_scale = weight_scales(w)
        q = quantize(flat_weight(w), (1.0 / w_scale)[:, None])
        self.register_buffer("w_t", q.t(), persistent=False)  # (kh*kw*C, K) column-major
        self.register_buffer("scale_b", (w_scale * in_scale).reshape(1, -1).float(), persistent=False)
        self.in_scale = float(in_scale)
        # On the weights' device: a CPU scalar would be read back in the middle of a CUDA graph.
        self.register_buffer("in_inv", torch.tensor(1.0 / in_scale, device=w.device), persistent=False)
        bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.register_buffer("bias", bias, persistent=False)
        from .fp8_gemm import gemm_kind

        self.fused = gemm_kind(w.is_cuda) == "triton"  # GEMM + epilogue as one Triton kernel (fp8_gemm)
        if w.is_cuda and not self.fused:
            gemm_plan(w.device, dtype, bias is not None)
        self.emit_scale: float | None = None
        self.keep = True  # whether anything but FP8 layers reads the output
        self.chain: Fp8Conv | None = None  # the 1x1 convolution run in this one's kernel (``_chained``)
        self.register_buffer("z_scale", None, persistent=False)  # where the residual comes E4M3: ``set_residual``
        self.fast_accum = os.environ.get("MLPERF_TORCH_FP8_FAST_ACCUM", "1") != "0"
        self._epilogue = _compiled(_epilogue) if compiled else _epilogue
        self._quantize = _compiled(quantize) if compiled else quantize

    def set_emit(self, scale: float, keep: bool) -> None:
        self.emit_scale, self.keep = scale, keep
        self.register_buffer("emit_inv", torch.tensor(1.0 / scale, device=self.w_t.device), persistent=False)

    def set_input_scale(self, scale: float) -> None:
        """The input comes quantised with ``scale`` (a producer's one copy for all its readers)."""
        self.scale_b.mul_(scale / self.in_scale)
        self.in_inv.fill_(1.0 / scale)
        self.in_scale = scale

    def set_residual(self, scale: float) -> None:
        """The residual comes as an E4M3 copy made with ``scale``."""
        self.register_buffer("z_scale", torch.tensor([scale], device=self.w_t.device), persistent=False)

    def forward(self, x: Any, z: Any = None) -> Any:
        xh = x.permute(0, 2, 3, 1)  # channels-last memory: (N, H, W, C) without a copy
        # On a GPU the fused kernel quantises an input in the model's dtype as it reads it: no E4M3
        # copy. Triton's interpreter rounds some values wrongly (test_torch_fp8): torch quantises there.
        x_inv = self.in_inv if self.fused and xh.dtype != FP8 and xh.is_cuda else None
        if xh.dtype != FP8 and x_inv is None:
            xh = self._quantize(xh, self.in_inv)
        n, h, w, _ = xh.shape
        ho = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1

        def nchw(t: Any) -> Any:
            return None if t is None else t.view(n, ho, wo, -1).permute(0, 3, 1, 2)

        zh = None if z is None or not self.add else z.permute(0, 2, 3, 1).reshape(-1, self.w_t.shape[1])
        emit = None if self.emit_scale is None else self.emit_inv
        if self.chain is not None:
            return self._chained(xh, zh, nchw)
        if self.fused:  # one kernel reads the activations where the window puts them: no patches
            from .fp8_gemm import conv

            out, q = conv(
                xh, self.w_t.t(), self.scale_b.reshape(-1), self.bias, zh, kernel=self.kernel, stride=self.stride,
                padding=self.padding, relu=self.relu, out_dtype=self.dtype if emit is None or self.keep else None,
                q_inv=emit, z_scale=None if zh is None else self.z_scale, x_inv=x_inv, fast_accum=self.fast_accum,
            )  # fmt: skip
            return nchw(out) if emit is None else (nchw(out), nchw(q))
        a = patches(xh, self.kernel, self.stride, self.padding)
        k = a.shape[-1]
        y = scaled_mm(a.reshape(-1, k), self.w_t, self.scale_b, self.bias, self.dtype, self.fast_accum)
        if not self.add and not self.relu and emit is None:
            out, q = y, None
        else:
            out, q = self._epilogue(y, zh, self.relu, self.dtype, emit, self.keep, self.z_scale)
        return nchw(out) if emit is None else (nchw(out), nchw(q))

    def _chained(self, xh: Any, zh: Any, nchw: Callable[[Any], Any]) -> Any:
        """This 1x1 convolution and ``chain``, the 1x1 one that reads its E4M3 copy, in one kernel
        (fp8_gemm.chain): returns (None, the E4M3 copy, what ``chain`` returns)."""
        from .fp8_gemm import chain

        r = self.chain
        assert r is not None and self.emit_scale is not None
        r_emit = None if r.emit_scale is None else r.emit_inv
        q1, y2, q2 = chain(
            xh.reshape(-1, xh.shape[-1]), self.w_t.t(), self.scale_b.reshape(-1), self.emit_inv, r.w_t.t(),
            r.scale_b.reshape(-1), bias1=self.bias, z=zh, z_scale=None if zh is None else self.z_scale,
            relu1=self.relu, bias2=r.bias, relu2=r.relu, out2_dtype=r.dtype if r_emit is None or r.keep else None,
            q2_inv=r_emit, fast_accum=self.fast_accum,
        )  # fmt: skip
        return None, nchw(q1), nchw(y2) if r_emit is None else (nchw(y2), nchw(q2))


class Fp8MaxPool(nn.Module):
    """A max-pool of E4M3 activations (NCHW in channels-last memory) between FP8 layers, E4M3 out,
    with the scale they came with: exact, as rounding is monotonic (``fp8_gemm.max_pool``). On a
    GPU fp8_gemm's kernel; on the CPU torch's pool of the same values in fp32."""

    def __init__(self, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, q: Any) -> Any:
        if q.is_cuda:
            from .fp8_gemm import max_pool

            return max_pool(q.permute(0, 2, 3, 1), self.kernel, self.stride, self.padding).permute(0, 3, 1, 2)
        out = nn.functional.max_pool2d(q.float(), self.kernel, self.stride, self.padding).to(FP8)
        return out.contiguous(memory_format=torch.channels_last)


def pool_facts(mod: Any) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a square max-pool ``Fp8MaxPool`` can run, else None."""
    if not isinstance(mod, nn.MaxPool2d) or mod.return_indices or mod.ceil_mode:
        return None
    facts = [nn.modules.utils._pair(v) for v in (mod.kernel_size, mod.stride, mod.padding, mod.dilation)]
    if any(a != b for a, b in facts) or facts[3][0] != 1:
        return None
    return facts[0][0], facts[1][0], facts[2][0]


# --- which convolutions, calibration, the rewrite -------------------------------------------------------------
def conv_facts(mod: Any) -> tuple[Any, bool, bool] | None:
    """(the convolution, relu, add) of a plain Conv2d or a fused conv (+ add) + ReLU module."""
    from .torch_backend import fused_conv_class

    if isinstance(mod, fused_conv_class()):
        return mod, True, bool(mod.add)
    if isinstance(mod, nn.Conv2d) and isinstance(mod.padding, tuple) and mod.padding_mode == "zeros":
        return mod, False, False
    return None


def eligible(conv: Any, mode: str, unaligned: bool = False) -> bool:
    """Whether a convolution becomes an FP8 GEMM, by its shape and attributes alone; with
    ``unaligned`` also where its channels break cuBLASLt's rule (``stem_mode`` fp8)."""
    w = conv.weight
    kh, kw = int(w.shape[2]), int(w.shape[3])
    if getattr(conv, "groups", 1) != 1 or any(d != 1 for d in conv.dilation):
        return False
    if (kh, kw) != (1, 1) and mode != "all":
        return False
    # A kxk one with "same" padding (odd kernels), as im2col pads; a 1x1 one unpadded.
    if tuple(int(p) for p in conv.padding) != (kh // 2, kw // 2) or kh % 2 == 0 or kw % 2 == 0:
        return False
    return unaligned or (int(w.shape[0]) % ALIGN == 0 and (int(w.shape[1]) * kh * kw) % ALIGN == 0)


def candidates(model: Any, mode: str, unaligned: bool = False) -> list[Any]:
    """The fx nodes (call_module) whose convolution becomes FP8, in graph order."""
    found = []
    for node in model.graph.nodes:
        if node.op != "call_module":
            continue
        facts = conv_facts(model.get_submodule(str(node.target)))
        if facts is not None and eligible(facts[0], mode, unaligned):
            found.append(node)
    return found


def calibrate(model: Any, batches: Iterable[Any], mode: str) -> dict[str, float]:
    """The largest |input| each FP8 candidate sees over ``batches`` (NCHW tensors on the model's
    device, in its dtype), by module name: the activation ranges the scales come from; and of
    the residual an add-fused candidate adds, under its name + ``RESIDUAL``. Unaligned ones (a
    stem) too: an engine's ranges serve either ``stem_mode``."""
    amax: dict[str, float] = {}
    hooks = []
    for node in candidates(model, mode, unaligned=True):
        name = str(node.target)

        def record(mod: Any, args: Any, name: str = name) -> None:
            for key, value in zip((name, name + RESIDUAL), args, strict=False):
                amax[key] = max(amax.get(key, 0.0), float(value.detach().abs().max()))

        hooks.append(model.get_submodule(name).register_forward_pre_hook(record))
    try:
        with torch.inference_mode():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return amax


def quantize_model(model: Any, amax: dict[str, float], mode: str, dtype: Any, compiled: bool, emit: bool = True) -> int:
    """Replace each FP8 candidate with ``amax`` by an ``Fp8Conv``; with ``emit``, an FP8 layer
    whose output an FP8 layer reads writes that layer's E4M3 input in its epilogue (and, in
    ``residual_mode`` fp8, the E4M3 residual an FP8 layer adds). Returns how many convolutions
    became FP8."""
    graph: fx.Graph = model.graph
    unaligned = stem_mode() == "fp8"
    nodes = candidates(model, mode, unaligned)
    missing = [str(n.target) for n in nodes if str(n.target) not in amax]
    if missing:
        raise HarnessError(f"fp8: no calibrated range for {', '.join(missing[:3])}; rebuild the engine (build-engine)")
    from .fp8_gemm import gemm_kind

    for node in nodes:  # cuBLASLt's FP8 GEMM wants K and N multiples of 16: only fp8_gemm's takes the rest
        conv = conv_facts(model.get_submodule(str(node.target)))[0]  # type: ignore[index]
        if conv.weight.is_cuda and not eligible(conv, mode) and gemm_kind(True) != "triton":
            raise HarnessError(
                f"fp8: {node.target} has {conv.weight.shape[1]} input channels, which cuBLASLt cannot take "
                "(MLPERF_TORCH_FP8_GEMM=cublas); MLPERF_TORCH_FP8_STEM=fp8 needs MLPERF_TORCH_FP8_GEMM=triton"
            )
    residual = emit and residual_mode() == "fp8"
    adds = [str(n.target) + RESIDUAL for n in nodes if conv_facts(model.get_submodule(str(n.target)))[2]]  # type: ignore[index]
    if residual and any(key not in amax for key in adds):
        raise HarnessError(
            f"fp8: no calibrated residual range for {', '.join(k for k in adds if k not in amax)[:200]} "
            "(MLPERF_TORCH_FP8_RESIDUAL=fp8); rebuild the engine (build-engine)"
        )
    for node in nodes:
        conv, relu, add = conv_facts(model.get_submodule(str(node.target)))  # type: ignore[misc]
        model.set_submodule(
            str(node.target), Fp8Conv(conv, calibrated_scale(amax, str(node.target)), relu, add, dtype, compiled)
        )
    if emit:
        _emit_quantized(model, set(nodes), amax, residual)
        _quantized_pools(model, set(nodes))
        from .fp8_gemm import kernel_options

        if "chain" in kernel_options():
            if any(p.is_cuda for p in model.parameters()):
                raise HarnessError(
                    "MLPERF_TORCH_FP8_KERNEL: chain gave wrong results on an H100 (Triton 3.6; CUDA 13.0's ptxas "
                    "crashed on its 64-channel pairs, BENCHMARKS.md 2026-12-06): it runs only in Triton's interpreter "
                    "until that is fixed; take chain out of the variable"
                )
            _chained(model, set(nodes))
    graph.lint()
    model.recompile()
    return len(nodes)


def _emit_quantized(model: Any, fp8_nodes: set[Any], amax: dict[str, float], residual: bool) -> None:
    """Where an FP8 layer's output is an FP8 layer's input (x), or with ``residual`` the residual
    it adds (z), the producer writes it quantised with one scale: the largest of its readers'
    (the inputs' calibrated ranges, the residuals' their own)."""
    graph: fx.Graph = model.graph
    for producer in list(fp8_nodes):
        readers = [u for u in producer.users if u in fp8_nodes and u.args[0] is producer]
        adders = [u for u in producer.users if residual and u in fp8_nodes and u not in readers]
        adders = [u for u in adders if model.get_submodule(str(u.target)).add and u.args[1:2] == (producer,)]
        if not readers and not adders:
            continue
        scales = [model.get_submodule(str(r.target)).in_scale for r in readers]
        scales += [calibrated_scale(amax, str(u.target) + RESIDUAL) for u in adders]
        scale = max(scales)
        for r in readers:  # one quantised copy: every reader takes the largest of the scales
            model.get_submodule(str(r.target)).set_input_scale(scale)
        for u in adders:
            model.get_submodule(str(u.target)).set_residual(scale)
        readers += adders
        others = [u for u in producer.users if u not in readers]
        model.get_submodule(str(producer.target)).set_emit(scale, keep=bool(others))
        _split_outputs(graph, producer, readers, others)


def _split_outputs(graph: fx.Graph, producer: Any, readers: list[Any], others: list[Any]) -> None:
    """``producer`` now returns (y, q): ``readers`` take the E4M3 copy q, ``others`` y."""
    with graph.inserting_after(producer):
        q = graph.call_function(operator.getitem, (producer, 1))
    with graph.inserting_after(producer):
        y = graph.call_function(operator.getitem, (producer, 0))
    for u in others:
        u.replace_input_with(producer, y)
    for r in readers:
        r.replace_input_with(producer, q)
    if not others:
        graph.erase_node(y)


def _quantized_pools(model: Any, fp8_nodes: set[Any]) -> None:
    """A max-pool whose input is an FP8 layer's output that nothing else reads, and whose output
    only FP8 layers read (as input, not residual): the layer writes its E4M3 copy alone, with
    the readers' largest scale, and an ``Fp8MaxPool`` pools that copy for them (ResNet-50's stem:
    the pool then moves a quarter of the bytes of its fp16 one)."""
    graph: fx.Graph = model.graph
    for pool in list(graph.nodes):
        facts = pool_facts(model.get_submodule(str(pool.target))) if pool.op == "call_module" else None
        if facts is None or pool.args[0] not in fp8_nodes or len(pool.args[0].users) != 1:
            continue
        producer = pool.args[0]
        readers = list(pool.users)
        if not readers or any(r not in fp8_nodes or r.args[0] is not pool or pool in r.args[1:] for r in readers):
            continue
        scale = max(model.get_submodule(str(r.target)).in_scale for r in readers)
        for r in readers:
            model.get_submodule(str(r.target)).set_input_scale(scale)
        model.get_submodule(str(producer.target)).set_emit(scale, keep=False)
        model.set_submodule(str(pool.target), Fp8MaxPool(*facts))
        _split_outputs(graph, producer, [pool], [])


def _flat(mod: Any) -> bool:
    """A fused 1x1 stride-1 convolution, not yet in a chain: ``fp8_gemm.chain``'s kind."""
    return bool(mod.fused and mod.chain is None and (mod.kernel, mod.stride, mod.padding) == ((1, 1), (1, 1), (0, 0)))


def _chained(model: Any, fp8_nodes: set[Any]) -> None:
    """Where a 1x1 convolution that writes only its E4M3 copy (ResNet's block output) is read by a
    fused 1x1 stride-1 one without a residual (the next block's first), the first runs the second
    in its kernel (``Fp8Conv.chain``, fp8_gemm.chain, where its shapes fit): that copy is written
    once, for the other readers (the next residual add), and never read back for the 1x1."""
    from .fp8_gemm import chain_fits

    graph: fx.Graph = model.graph
    erased = set()
    for head in [n for n in graph.nodes if n in fp8_nodes]:
        if head in erased:  # chained into an earlier head
            continue
        p = model.get_submodule(str(head.target))
        copies = [u for u in head.users if u.target is operator.getitem and u.args[1] == 1]
        if not _flat(p) or p.emit_scale is None or p.keep or len(copies) != 1:
            continue
        for r in [u for u in copies[0].users if u in fp8_nodes and u.args == (copies[0],)]:
            second = model.get_submodule(str(r.target))
            (k1, n1), n2 = p.w_t.shape, second.w_t.shape[1]  # w_t: (K, N)
            if _flat(second) and not second.add and chain_fits(k1, n1, n2):
                p.chain = second  # a submodule of the head now; its own node and path go
                with graph.inserting_after(head):
                    link = graph.call_function(operator.getitem, (head, 2))
                r.replace_all_uses_with(link)
                graph.erase_node(r)
                erased.add(r)
                model.delete_submodule(str(r.target))
                break


# --- the accuracy gate ------------------------------------------------------------------------------
def accuracy_gate(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """A lower-precision pipeline's outputs (N, classes) against the FP32 model's on the same
    inputs: relative error (Frobenius, over the whole batch), each sample's largest relative
    error, and top-1 agreement in percent."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise HarnessError(f"accuracy gate: outputs of shape {got.shape} against {want.shape}")
    per = np.linalg.norm(got - want, axis=1) / np.maximum(np.linalg.norm(want, axis=1), 1e-30)
    return {
        "relErr": float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30)),
        "maxSampleRelErr": float(per.max()),
        "top1Agreement": float((got.argmax(1) == want.argmax(1)).mean() * 100),
        "finite": float(np.isfinite(got).all()),
    }
