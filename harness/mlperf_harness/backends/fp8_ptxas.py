"""What ptxas makes of fp8_gemm's kernels for Hopper, on any machine: Triton compiles a kernel
for sm_90a without a GPU, with the compile-time arguments and launch settings its launcher would
use (``fp8_gemm.conv_constants``, ``chain_constants``) and pointers and sizes specialised as a
launch specialises them (16-byte aligned, multiples of 16); ptxas (``ptxas_path``: the one
Triton runs on the lent machines) then says how many registers a thread takes, how many bytes it
spills and how much shared memory a program takes (a stage of the K loop per tile of operands:
one stage means no pipelining). A tile setting that spills in the K loop is slow wherever it
runs: this checks settings before device time is spent timing them. It does not time anything."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HarnessError
from . import fp8_gemm

FP8, FP16, FP32 = "*fp8e4nv", "*fp16", "*fp32"
HOPPER = 90  # sm_90a: wgmma


@dataclass(frozen=True)
class Usage:
    registers: int  # a thread's
    spilled: int  # bytes a thread stores to local memory
    shared: int  # bytes of shared memory a program takes

    def __str__(self) -> str:
        return f"{self.registers} registers, {self.spilled} bytes spilled, {self.shared // 1024} KiB shared"


def ptxases() -> dict[str, str]:
    """The ptxas binaries a GPU run's Triton may compile with: the one bundled with Triton (CUDA
    12.8 in Triton 3.6) and torch's own where it ships one (torch 2.11+cu130: CUDA 13.0's; torch's
    inductor points Triton at it the first time it compiles, so on a lent machine fp8_gemm's
    kernels are built by it after the model's first compiled piece). The two differ: 13.0's
    crashed on kernels 12.8's compiled (2026-12-06)."""
    import triton

    found = {"triton": str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")}
    try:
        import torch

        bundled = Path(torch.__file__).parent / "bin" / "ptxas"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            found["torch"] = str(bundled)
    except ImportError:
        pass
    return found


def ptxas_path() -> str:
    """The ptxas a model run's Triton compiles fp8_gemm with: TRITON_PTXAS_PATH where set, else
    torch's where there is one, else Triton's (``ptxases``)."""
    found = ptxases()
    return os.environ.get("TRITON_PTXAS_PATH") or found.get("torch", found["triton"])


@contextlib.contextmanager
def compiled_by(ptxas: str) -> Iterator[None]:
    """Triton compiles with ``ptxas`` inside, afresh: the PTX version it writes follows its ptxas's,
    and its cache key holds the first ptxas version a process asked for (an lru_cache), so a
    cached kernel may be another ptxas's."""
    import triton

    with triton.knobs.nvidia.scope(), triton.knobs.compilation.scope():
        triton.knobs.nvidia.ptxas = ptxas
        triton.knobs.compilation.always_compile = True
        yield


def usage(
    body: Any, pointers: dict[str, str], sizes: tuple[str, ...], consts: dict[str, Any], launch: dict[str, int]
) -> Usage:
    """Compile ``body`` for sm_90a with ``consts`` (its other parameters: ``pointers`` by type,
    ``sizes`` as int32, the rest None) and ``launch``; ptxas's account of it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    names = list(inspect.signature(body).parameters)
    consts = {**{n: None for n in names if n not in pointers and n not in sizes}, **consts}
    signature = {n: pointers.get(n, "i32" if n in sizes else "constexpr") for n in names}
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in (*pointers, *sizes)}
    source = ASTSource(
        fn=triton.jit(body),
        signature=signature,
        constexprs={(names.index(k),): v for k, v in consts.items()},
        attrs=aligned,
    )
    ptxas = ptxas_path()
    with compiled_by(ptxas):
        try:
            kernel = compile(source, target=GPUTarget("cuda", HOPPER, 128), options=dict(launch))
        except Exception as exc:  # Triton runs ptxas itself for the cubin: a crash shows there first
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise HarnessError(f"compiling {body.__name__} (ptxas {ptxas}): {first[:300]}") from exc
    ptx = kernel.asm["ptx"]
    arch = re.search(r"\.target (sm_\w+)", ptx)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ptx")
        src.write_text(ptx)
        out = subprocess.run(
            [ptxas, f"-arch={arch.group(1) if arch else 'sm_90a'}", "-v", str(src), "-o", str(Path(tmp, "k.o"))],
            capture_output=True,
            text=True,
        )
    registers = re.search(r"Used (\d+) registers", out.stderr)
    spilled = re.search(r"(\d+) bytes spill stores", out.stderr)
    if out.returncode or registers is None:
        raise HarnessError(f"ptxas on {body.__name__}: {out.stderr.strip()[:400]}")
    return Usage(int(registers.group(1)), int(spilled.group(1)) if spilled else 0, int(kernel.metadata.shared))


def conv_usage(side: int, n: int, c: int, kernel: int, stride: int, batch: int = 1024) -> Usage:
    """fp8_gemm's kernel for one of ResNet-50's convolutions as the model runs it (``side`` its
    output's, E4M3 in, or fp16 for fewer than 16 channels, the stem's; a 1x1 into more channels
    adds the E4M3 residual; ReLU; only the E4M3 copy written), with the tiles and options
    (MLPERF_TORCH_FP8_TILES, MLPERF_TORCH_FP8_KERNEL) of the environment."""
    add, x_quant = c < n and kernel == 1, c < 16
    consts, launch = fp8_gemm.conv_constants(
        (batch, side * stride, side * stride, c), n, (kernel, kernel), (stride, stride), (kernel // 2, kernel // 2),
        has_bias=True, has_z=add, z_scaled=add, relu=True, write_y=False, write_q=True, x_quant=x_quant,
        fast_accum=True,
    )  # fmt: skip
    if consts["TMA"]:
        raise HarnessError("fp8_ptxas: TMA descriptors are not modelled; unset tma in MLPERF_TORCH_FP8_KERNEL")
    pointers = {
        "x_ptr": FP16 if x_quant else FP8, "w_ptr": FP8, "scale_ptr": FP32, "bias_ptr": FP16, "z_ptr": FP8,
        "z_scale_ptr": FP32, "y_ptr": FP16, "q_ptr": FP8, "q_inv_ptr": FP32, "x_inv_ptr": FP32,
    }  # fmt: skip
    return usage(fp8_gemm._body, pointers, ("M", "N"), consts, launch)


def chain_usage(k1: int, n1: int, n2: int) -> Usage:
    """fp8_gemm.chain's kernel for one of ResNet-50's block-to-block pairs as the model runs it
    (E4M3 residual, biases, ReLUs, only E4M3 copies written), with the environment's
    MLPERF_TORCH_FP8_CHAIN_TILES."""
    consts, launch = fp8_gemm.chain_constants(
        k1, n1, n2, has_b1=True, has_z=True, z_scaled=True, relu1=True, has_b2=True, relu2=True, write_y2=False,
        write_q2=True, fast_accum=True,
    )  # fmt: skip
    pointers = {
        "x_ptr": FP8, "w1_ptr": FP8, "s1_ptr": FP32, "b1_ptr": FP16, "z_ptr": FP8, "zs_ptr": FP32, "q1_ptr": FP8,
        "q1_inv_ptr": FP32, "w2_ptr": FP8, "s2_ptr": FP32, "b2_ptr": FP16, "y2_ptr": FP16, "q2_ptr": FP8,
        "q2_inv_ptr": FP32,
    }  # fmt: skip
    return usage(fp8_gemm._chain_body, pointers, ("M",), consts, launch)
