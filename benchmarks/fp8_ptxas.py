"""What ptxas makes of resnet50's FP8 kernels for Hopper, on this CPU (no GPU): registers a
thread, bytes spilled and shared memory a program, per convolution shape and block-to-block pair.

    PYTHONPATH=harness:benchmarks python3 benchmarks/fp8_ptxas.py [--tiles SETTING ...] [--chain-tiles SETTING ...]

SETTING: ``default`` (the rule: fp8_gemm.tiles, chain_tiles) or BM,BN,BK,warps,stages (as
MLPERF_TORCH_FP8_TILES / MLPERF_TORCH_FP8_CHAIN_TILES). Compiled with the launch's alignment
and options (MLPERF_TORCH_FP8_KERNEL, tma aside) by Triton for sm_90a (``fp8_ptxas``): a check of
settings before device time is spent timing them, not a timing. The ptxas is the one a lent
machine's Triton runs (fp8_ptxas.ptxas_path: TRITON_PTXAS_PATH, else torch's CUDA 13.0 one).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import time
from collections.abc import Callable

from _common import machine, stamp
from gpu_fp8 import CHAINS, CONVS
from mlperf_harness.backends import fp8_ptxas


def row(label: str, variable: str, settings: list[str], measure: Callable[[], object]) -> None:
    cells = []
    for setting in settings:
        os.environ.pop(variable, None)
        if setting != "default":
            os.environ[variable] = setting
        try:
            cells.append(str(measure()))
        except Exception as exc:  # a setting the compiler refuses: shown, the table goes on
            cells.append(f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
    os.environ.pop(variable, None)
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", nargs="+", default=["default"])
    ap.add_argument("--chain-tiles", nargs="+", default=["default"])
    args = ap.parse_args()
    import triton

    start = time.perf_counter()
    ptxas = fp8_ptxas.ptxas_path()
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"resnet50 FP8 kernels for sm_90a, Triton {triton.__version__}, {ptxas} ({version})")
    print(f"{machine()}, {stamp()}\n")
    print("| convolution | " + " | ".join(args.tiles) + " |\n|---|" + "---|" * len(args.tiles))
    for side, n, c, k, st in CONVS:
        label = f"{k}x{k}/{st} {side * st}->{side} {c}->{n}"
        row(label, "MLPERF_TORCH_FP8_TILES", args.tiles, functools.partial(fp8_ptxas.conv_usage, side, n, c, k, st))
    print("\n| block-to-block pair | " + " | ".join(args.chain_tiles) + " |\n|---|" + "---|" * len(args.chain_tiles))
    for side, k1, n1, n2 in CHAINS:
        label = f"{side}x{side} {k1}->{n1}->{n2}"
        measure = functools.partial(fp8_ptxas.chain_usage, k1, n1, n2)
        row(label, "MLPERF_TORCH_FP8_CHAIN_TILES", args.chain_tiles, measure)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
