"""resnet50 in FP8 on one Hopper GPU (pytorch backend, ``precision: fp8``): one device call.

    PYTHONUNBUFFERED=1 PYTHONPATH=harness:benchmarks python3 benchmarks/gpu_fp8.py [--batch 1024]
        [--seconds 15] [--budget 400] [--variants default all-triton-r8 ...] [--gemms [SETTING ...] | wide]
        [--chains [SETTING ...]]
        [--instances N ...] [--no-profile] [--no-server]
    PYTHONPATH=harness:benchmarks python3 benchmarks/gpu_fp8.py --cpu --tiny   # dry run of every stage

1. With ``--gemms``, first each FP8 convolution shape of ResNet-50 alone, as the model runs it,
   with each setting (fp8_gemm's tiles and kernel options, or cuBLASLt + epilogue); with
   ``--chains``, each block-to-block pair as two kernels and as one (fp8_gemm.chain).
2. Calibration: the benchmark's calibration samples; the dataset is SYNTHETIC, so they are its
   first 500 images (a real run takes MLPerf's cal_image_list_option_1.txt).
3. Accuracy gate before any figure: fp8 and fp16 against the FP32 model (no TF32), same inputs,
   on the synthetic samples and on fresh random inputs: relative error and top-1 agreement of
   the softmax, and relative error of the pooled features (better conditioned: the synthetic
   classifier's margins are tiny, see BENCHMARKS.md); fp8 with CUDA graphs against fp8 eager.
   The plain loop (CUDA graph replays on device-resident samples, events timed) for fp16 and for
   each fp8 variant (``VARIANTS``: ``default`` is what a run gets with no MLPERF_TORCH_FP8_*
   variable set), in the same run.
4. The harness: LoadGen Offline in fp8 (the fastest variant; once per ``--instances`` count),
   its ratio to that variant's plain loop, short and sustained as long as the harness run (a
   GPU whose clocks fall under a long load is slower in both alike), and to TensorRT's 96,029
   per H200; then Server at 15 ms: the tuner's highest VALID target (probes of
   ``--probe-seconds``) and a fresh run at it (``--no-server`` skips it).
5. torch.profiler: GPU time per kernel of one fp8 batch, largest first.

Every stage runs in try/except (its error printed, the next stage runs) within a global time
budget (a stage that would start past it is skipped, saying so). Random-weight ResNet-50 of the
real architecture and SYNTHETIC data: the GPU's figures, not a submission's; MLPerf's 99 % target
needs the real weights and ImageNet (see ``ACCURACY_COMMAND``). Writes $OUT/gpu_fp8.json when
$OUT is set. Ran on an H200 (2026-12-04) and an H100 (2026-12-05): BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import images, machine, stamp, tuned_server, workspace
from gpu_h200 import SOFTMAX, backend, harness, profile, release, replay_rate
from mlperf_harness.backends.torch_fp8 import accuracy_gate
from mlperf_harness.benchmarks.resnet50 import INPUT

TENSORRT_H200 = 96_029.0  # best published resnet50 Offline per H200 (v4.1, 8x H200 closed, INT8)
# variant -> (MLPERF_TORCH_FP8_CONVS, MLPERF_TORCH_FP8_EMIT, MLPERF_TORCH_FP8_FAST_ACCUM, torch.compile of
# the whole model at the full batch, MLPERF_TORCH_FP8_GEMM, MLPERF_TORCH_FP8_RESIDUAL,
# MLPERF_TORCH_FP8_KERNEL, MLPERF_TORCH_FP8_STEM). The compiled ones take minutes to compile: not in
# the default run.
VARIANTS = {
    "1x1": ("1x1", "1", "1", "off", "cublas", "fp16", "none", "fp16"),
    "1x1-noemit": ("1x1", "0", "1", "off", "cublas", "fp16", "none", "fp16"),
    "all": ("all", "1", "1", "off", "cublas", "fp16", "none", "fp16"),
    # the tensor cores' sums promoted to fp32
    "1x1-exactacc": ("1x1", "1", "0", "off", "cublas", "fp16", "none", "fp16"),
    "1x1-compile": ("1x1", "1", "1", "default", "cublas", "fp16", "none", "fp16"),
    # inductor may then pick Triton GEMM templates with the epilogue (add, ReLU, quantise) fused in
    "1x1-autotune": ("1x1", "1", "1", "max-autotune", "cublas", "fp16", "none", "fp16"),
    # fp8_gemm: the GEMM and its epilogue as one Triton kernel
    "1x1-triton": ("1x1", "1", "1", "off", "triton", "fp16", "none", "fp16"),
    "all-triton": ("all", "1", "1", "off", "triton", "fp16", "none", "fp16"),
    # and the residuals read as E4M3: a block output written once, in E4M3 (half the bytes of a batch)
    "all-triton-r8": ("all", "1", "1", "off", "triton", "fp8", "none", "fp16"),
    # and the residual's tile read before the products; and the 1x1 stride-1 ones through TMA
    "all-triton-r8-z": ("all", "1", "1", "off", "triton", "fp8", "zearly", "fp16"),
    "all-triton-r8-tma": ("all", "1", "1", "off", "triton", "fp8", "tma,zearly", "fp16"),
    # the harness's own defaults (none of the variables set): what a run with precision fp8 gets
    "default": (None, None, None, "off", None, None, None, None),
    # and the 7x7 stem in FP8 too (fp8_gemm over its flattened taps), the max-pool on its E4M3 copy
    "stem": (None, None, None, "off", None, None, None, "fp8"),
    # the defaults before 2026-12-06: the convolutions of one K step not persistent (one tile a program)
    "zearly": (None, None, None, "off", None, None, "zearly", None),
}
ENV = ("CONVS", "EMIT", "FAST_ACCUM", None, "GEMM", "RESIDUAL", "KERNEL", "STEM")  # VARIANTS' MLPERF_TORCH_FP8_*
DEFAULT_VARIANTS = ["1x1", "default"]  # the first path, and what a run gets now
# ResNet-50's (v1.5: strides in the 3x3 convolutions and the projections) FP8-eligible convolutions,
# the distinct shapes of its 53: (output side, output channels, input channels, kernel, stride) per
# stage: the 1x1 ones (conv1, conv3, the projection) and the 3x3 ones (the first block's strided);
# the 7x7 stem last (FP8 with MLPERF_TORCH_FP8_STEM=fp8: its fp16 input, padded to 4 channels,
# quantised as it is read).
CONVS = [(56, 64, 64, 1, 1), (56, 256, 64, 1, 1), (56, 64, 256, 1, 1), (56, 128, 256, 1, 1),
         (28, 512, 128, 1, 1), (28, 512, 256, 1, 2), (28, 128, 512, 1, 1), (28, 256, 512, 1, 1),
         (14, 1024, 256, 1, 1), (14, 1024, 512, 1, 2), (14, 256, 1024, 1, 1), (14, 512, 1024, 1, 1),
         (7, 2048, 512, 1, 1), (7, 2048, 1024, 1, 2), (7, 512, 2048, 1, 1),
         (56, 64, 64, 3, 1), (28, 128, 128, 3, 2), (28, 128, 128, 3, 1), (14, 256, 256, 3, 2),
         (14, 256, 256, 3, 1), (7, 512, 512, 3, 2), (7, 512, 512, 3, 1), (112, 64, 4, 7, 2)]  # fmt: skip
# ResNet-50's block-to-block pairs (fp8_gemm.chain): (side, a block's width, its output's channels,
# the next block's width): within each stage and into the next (whose first 1x1 is stride 1 in v1.5).
CHAINS = [(56, 64, 256, 64), (56, 64, 256, 128), (28, 128, 512, 128), (28, 128, 512, 256),
          (14, 256, 1024, 256), (14, 256, 1024, 512), (7, 512, 2048, 512)]  # fmt: skip
CHAIN_TILES = ["default", "64,64,128,4,3", "64,128,128,8,3", "64,128,128,8,4", "128,64,128,8,3"]
# --gemms settings: TILES (fp8_gemm.tiles' rule: "default", or BM,BN,BK,warps,stages) and
# MLPERF_TORCH_FP8_KERNEL options after "+"; "cublas": cuBLASLt and the inductor epilogue.
TILES = ["default", "default+zearly", "default+tma+zearly"]
# A wider search (--gemms wide): fewer stages and other shapes of tile for the memory-bound 1x1
# ones (one or two K steps), TMA for the 1x1 stride-1 ones (the others skip TMA settings).
MORE_TILES = [
    *TILES, "128,128,64,4,2+zearly", "64,128,64,4,2+zearly", "128,256,64,8,2+zearly", "256,128,64,8,2+zearly",
    "128,128,128,4,2+zearly", "128,64,64,4,3+zearly", "128,256,128,8,3+zearly", "128,128,128,4,3+tma+zearly",
]  # fmt: skip
ACCURACY_COMMAND = (
    "with the real resnet50_v1.onnx and ImageNet (val_map.txt and cal_image_list_option_1.txt beside "
    "the images): mlperf run with precision fp8, backend pytorch, testModes [AccuracyOnly]; target 99 % "
    "of 76.46 % top-1"
)
T0 = time.perf_counter()
figures: dict[str, Any] = {}


def say(label: str, value: str) -> None:
    figures.setdefault("lines", []).append(f"{label}: {value}")
    print(f"  [{time.perf_counter() - T0:5.0f} s] {label}: {value}", flush=True)


def stage(name: str, budget: float, fn: Callable[[], Any]) -> Any:
    """Run one stage unless the budget is spent; print its error and go on if it fails."""
    if time.perf_counter() - T0 > budget:
        say(name, "SKIPPED (time budget spent)")
        return None
    print(f"== {name}", flush=True)
    try:
        return fn()
    except BaseException as exc:  # every stage's failure is reported, the run goes on
        if isinstance(exc, KeyboardInterrupt):
            raise
        say(name, f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        traceback.print_exc()
        return None


def set_variant(name: str) -> str:
    """Set the variant's environment (None: unset, the harness's default); returns its torch.compile mode."""
    for key, value in zip(ENV, VARIANTS[name], strict=True):
        if key is not None and value is None:
            os.environ.pop(f"MLPERF_TORCH_FP8_{key}", None)
        elif key is not None:
            os.environ[f"MLPERF_TORCH_FP8_{key}"] = value
    return VARIANTS[name][3]


def _micros(call: Callable[[], Any], reps: int, cpu: bool) -> float:
    """Microseconds a call of ``call``: CUDA events around ``reps`` calls (wall clock on the CPU)."""
    import torch

    if cpu:
        t = time.perf_counter()
        for _ in range(reps):
            call()
        return (time.perf_counter() - t) / reps * 1e6
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def chains(batch: int, settings: list[str], cpu: bool = False) -> None:
    """Each of ResNet-50's block-to-block pairs (``CHAINS``: a block's last 1x1, its E4M3 residual
    added, and the next block's first 1x1) at ``batch``: the two fp8_gemm kernels one after the
    other (the default path), then fp8_gemm.chain with each of ``settings`` (``default``: its
    rule, or BM,BN,BK,warps,stages as MLPERF_TORCH_FP8_CHAIN_TILES). Prints microseconds per pair
    and the best setting's speed-up. With ``cpu`` (the dry run): the first pair, interpreted."""
    import torch
    from mlperf_harness.backends import fp8_gemm, torch_fp8

    dev = torch.device("cpu" if cpu else "cuda")
    gen = torch.Generator().manual_seed(0)
    reps = 1 if cpu else 10

    def fp8(*shape: int, gain: float = 1.0) -> Any:
        return torch_fp8.quantize(torch.randn(*shape, generator=gen) * gain, 1.0).to(dev)

    def timed(call: Callable[[], Any], what: str) -> float:
        """Microseconds a call (NaN where the compiler refuses it: shown, the sweep goes on)."""
        try:
            call()  # compiled and warm first
            return _micros(call, reps, cpu)
        except Exception as exc:
            print(f"  chain {what}: {type(exc).__name__}: {str(exc)[:160]}")
            return float("nan")

    def pair(side: int, k1: int, n1: int, n2: int) -> dict[str, float]:
        m = batch * side * side
        x, w1, w2, z = fp8(m, k1, gain=3.0), fp8(n1, k1), fp8(n2, n1), fp8(m, n1, gain=3.0)
        s1, s2 = (torch.full((n,), 0.01, device=dev) for n in (n1, n2))
        b1, b2 = (torch.zeros(n, device=dev, dtype=torch.float16) for n in (n1, n2))
        one, inv = torch.ones(1, device=dev), torch.full((1,), 10.0, device=dev)

        def apart() -> Any:
            _, q = fp8_gemm.gemm(x, w1, s1, b1, z, relu=True, q_inv=inv, z_scale=one)
            return fp8_gemm.gemm(q, w2, s2, b2, relu=True, q_inv=inv)

        def fused() -> Any:
            return fp8_gemm.chain(x, w1, s1, inv, w2, s2, bias1=b1, z=z, z_scale=one, bias2=b2, q2_inv=inv)

        what = f"{side}x{side} {k1}->{n1}->{n2}"
        times = {"apart": timed(apart, what)}
        for setting in settings:
            os.environ.pop("MLPERF_TORCH_FP8_CHAIN_TILES", None)
            if setting != "default":
                os.environ["MLPERF_TORCH_FP8_CHAIN_TILES"] = setting
            times[setting] = timed(fused, f"{what} {setting}")
        return times

    rows = []
    for side, k1, n1, n2 in CHAINS[:1] if cpu else CHAINS:
        times = pair(side, k1, n1, n2)
        os.environ.pop("MLPERF_TORCH_FP8_CHAIN_TILES", None)
        ok = {t: v for t, v in times.items() if v == v and t != "apart"}
        best = min(ok, key=lambda t: ok[t]) if ok else "-"
        rows.append({"side": side, "K1": k1, "N1": n1, "N2": n2, "us": times, "best": best})
        say(
            f"fp8 chain {side}x{side} {k1}->{n1}->{n2}",
            " ".join(f"{t} {v:.0f} us" for t, v in times.items())
            + (f"; best {best}, {times['apart'] / ok[best]:.2f}x the two kernels" if ok else ""),
        )
    figures["chains"] = rows


def gemms(batch: int, settings: list[str], cpu: bool = False) -> None:
    """Each FP8-eligible convolution shape of ResNet-50 at ``batch`` as the all-triton-r8 model
    runs it (an ``Fp8Conv``: E4M3 input, ReLU, the next layer's E4M3 copy; where N > C, as conv3
    and the projections, the E4M3 residual added and only the E4M3 output written), timed with
    CUDA events, for each setting (``TILES``): fp8_gemm's kernel with a tile and kernel options,
    or cuBLASLt's GEMM (over im2col patches for 3x3) and the inductor epilogue. TMA settings run
    on the 1x1 stride-1 shapes only (the others read through pointers either way). Prints
    microseconds per call, the best setting and the bytes a microsecond it moved. With ``cpu``
    (the dry run): two shapes, emulated and interpreted, wall-clock timed."""
    import torch
    from mlperf_harness.backends import torch_fp8

    dev = torch.device("cpu" if cpu else "cuda")
    micros = functools.partial(_micros, cpu=cpu)

    def one(conv: Any, x: Any, z: Any, add: bool, setting: str, shape: str) -> float:
        """Microseconds a call of one setting (NaN where the compiler refuses it: shown, the sweep goes on)."""
        tile, *options = setting.split("+")
        os.environ["MLPERF_TORCH_FP8_GEMM"] = "cublas" if tile == "cublas" else "triton"
        os.environ["MLPERF_TORCH_FP8_KERNEL"] = ",".join(options) or "none"
        os.environ.pop("MLPERF_TORCH_FP8_TILES", None)
        if tile not in ("default", "cublas"):
            os.environ["MLPERF_TORCH_FP8_TILES"] = tile
        mod = torch_fp8.Fp8Conv(conv, 1.0, True, add, torch.float16, compiled=not cpu)
        mod.set_emit(1.0, keep=False)
        if add:
            mod.set_residual(1.0)
        try:
            with torch.inference_mode():
                call = functools.partial(mod, x, z if add else None)
                for _ in range(1 if cpu else 3):
                    call()
                return micros(call, 1 if cpu else 10)
        except Exception as exc:
            print(f"  {shape} {setting}: {type(exc).__name__}: {str(exc)[:160]}")
            return float("nan")

    rows = []
    for side, n, c, kernel, stride in CONVS[-3:] if cpu else CONVS:
        conv = torch.nn.Conv2d(c, n, kernel, stride, kernel // 2, bias=True).to(dev).eval()
        x = torch.randn(batch, side * stride, side * stride, c, device=dev)
        # The stem reads the fp16 images (quantised as read); the others a producer's E4M3 copy.
        x = x.half() if c < torch_fp8.ALIGN else torch_fp8.quantize(x, 1.0)
        x = x.permute(0, 3, 1, 2)  # NCHW in channels-last memory, as the model's activations
        z = torch_fp8.quantize(torch.randn(batch, side, side, n, device=dev), 1.0).permute(0, 3, 1, 2)
        add = c < n and kernel == 1
        shape = f"{side}x{side} {c}->{n} {kernel}x{kernel}"
        flat = (kernel, stride) == (1, 1)
        times = {t: one(conv, x, z, add, t, shape) for t in settings if flat or "tma" not in t.split("+")}
        ok = {t: v for t, v in times.items() if v == v and t != "cublas"}
        best = min(ok, key=lambda t: ok[t]) if ok else "-"
        read = stride * stride * c * x.element_size()
        moved = batch * side * side * (read + n * (2 if add else 1))  # bytes in and out (E4M3 but the stem's input)
        rows.append((side, n, c, kernel, stride, times, best))
        say(
            f"fp8 conv {kernel}x{kernel}/{stride} {side * stride}->{side} {c}->{n}{' +residual' if add else ''}",
            " ".join(f"{t} {v:.0f} us" for t, v in times.items())
            + (f"; best {best}, {moved / ok[best] / 1e6:.2f} TB/s" if ok else ""),
        )
    for key in ("MLPERF_TORCH_FP8_TILES", "MLPERF_TORCH_FP8_KERNEL"):
        os.environ.pop(key, None)
    figures["convs"] = [
        {"side": o, "N": n, "C": c, "kernel": k, "stride": st, "us": t, "best": b} for o, n, c, k, st, t, b in rows
    ]


def outputs(b: Any, x: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax and pooled features of ``x`` through a backend loaded without CUDA graphs (so the
    pooling's forward hook sees every batch)."""
    [pool] = [m for m in b._model.modules() if "GlobalAveragePool" in type(m).__name__]
    feats: list[np.ndarray] = []
    hook = pool.register_forward_hook(lambda m, a, out: feats.append(out.float().reshape(len(out), -1).cpu().numpy()))
    try:
        soft = [b.predict({INPUT: x[i : i + chunk]})[SOFTMAX] for i in range(0, len(x), chunk)]
    finally:
        hook.remove()
    return np.concatenate(soft).astype(np.float64), np.concatenate(feats).astype(np.float64)


def accuracy(model: Path, data: np.ndarray, batch: int, calibration: list[np.ndarray], variants: list[str]) -> None:
    """fp16, and fp8 with each GEMM kind and residual dtype of the run's ``variants``, against FP32."""
    rng = np.random.default_rng(int(time.time()))
    sets = {"synthetic samples": data[:batch], "random inputs": (rng.standard_normal(data[:batch].shape) * 60)}
    sets = {k: v.astype(np.float32) for k, v in sets.items()}
    ref = backend(model, batch, "fp32", "off", SOFTMAX, use_graphs=False)
    want = {k: outputs(ref, x, batch) for k, x in sets.items()}
    release(ref)

    # One variant per (GEMM kind, residual, stem, chain): the convolutions' mode changes which layers, not their
    # rounding.
    def kind(v: str) -> str:
        _, _, _, _, gemm, residual, kernel, stem = VARIANTS[v]
        if gemm is None:  # the defaults, and options on them
            extra = (", FP8 stem" if stem == "fp8" else "") + "".join(
                f", {option}" for option in (kernel or "").split(",") if option in ("chain", "persist")
            )
            return "fp8 defaults" + extra
        label = f"fp8 {gemm}" + (", E4M3 residuals" if residual == "fp8" else "")
        return label if kernel == "none" else f"{label}, {kernel}"

    kinds = {kind(v): v for v in variants}
    legs = [("fp16", "1x1"), *sorted(kinds.items())]
    for label, variant in legs:
        precision = label.split()[0]
        set_variant(variant)
        b = backend(model, batch, precision, "off", SOFTMAX, calibration=calibration, use_graphs=False)
        for name, x in sets.items():
            soft, feat = outputs(b, x, batch)
            gate, fgate = accuracy_gate(soft, want[name][0]), accuracy_gate(feat, want[name][1])
            figures[f"accuracy {label} {name}"] = {"softmax": gate, "features": fgate}
            say(
                f"accuracy vs FP32, {label}, {name}",
                f"softmax rel err {gate['relErr']:.2e}, top-1 agreement {gate['top1Agreement']:.2f} %, "
                f"features rel err {fgate['relErr']:.2e}{'' if gate['finite'] else ', NOT FINITE'}",
            )
        if precision == "fp8":
            graphed = backend(model, batch, precision, "off", SOFTMAX, calibration=calibration)
            x = sets["synthetic samples"]
            got = np.concatenate([graphed.predict({INPUT: x[i : i + batch]})[SOFTMAX] for i in range(0, len(x), batch)])
            same = accuracy_gate(got, outputs(b, x, batch)[0])
            say(
                f"{label} with CUDA graphs vs eager",
                f"rel err {same['relErr']:.2e}, top-1 {same['top1Agreement']:.2f} %",
            )
            release(graphed)
        release(b)
    say("MLPerf 99 % accuracy target", "NOT CHECKED here (synthetic weights and data); " + ACCURACY_COMMAND)


def plain(
    model: Path,
    data: np.ndarray,
    batch: int,
    precision: str,
    calibration: list[np.ndarray],
    cpu: bool,
    label: str,
    compile_mode: str = "off",
    seconds: float = 0.0,
) -> float:
    """The plain loop's images/s (``replay_rate``; sustained for ``seconds`` where given)."""
    b = backend(model, batch, precision, compile_mode, "ArgMax:0", calibration=calibration)
    if cpu:  # no CUDA graphs on the CPU: a few host batches, wall-clock timed (the dry run's figure)
        start = time.perf_counter()
        for _ in range(2):
            b.predict({INPUT: data[:batch]})
        rate = 2 * batch / (time.perf_counter() - start)
    else:
        rate = replay_rate(b, data, batch, seconds)
    extra = f", {b.fp8_convs} FP8 convolutions" if precision == "fp8" else ""
    release(b)
    held = f", sustained {seconds:.0f} s" if seconds and not cpu else ""
    say(f"plain loop {label}{extra}, batch {batch}{held}", f"{rate:,.0f} images/s")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--budget", type=float, default=400.0, help="seconds: later stages are skipped past it")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-server", action="store_true", help="skip the tuner's Server search in fp8")
    ap.add_argument("--probe-seconds", type=float, default=5.0, help="the tuner's Server probes")
    ap.add_argument(
        "--instances", type=int, nargs="+", metavar="N", help="harness Offline once with each number of instances "
        "on the GPU (default: the harness's, 2 on an H200)",
    )  # fmt: skip
    ap.add_argument(
        "--gemms", nargs="*", metavar="SETTING", help="first time each FP8 convolution shape with these settings "
        f"(BM,BN,BK,warps,stages or default, + MLPERF_TORCH_FP8_KERNEL options, or cublas; none given: "
        f"{' '.join(TILES)}; wide: {' '.join(MORE_TILES)})",
    )  # fmt: skip
    ap.add_argument(
        "--chains", nargs="*", metavar="SETTING", help="first time each block-to-block pair apart and chained "
        f"(fp8_gemm.chain) with these settings (default or BM,BN,BK,warps,stages; none given: {' '.join(CHAIN_TILES)})",
    )  # fmt: skip
    ap.add_argument("--parts-only", action="store_true", help="stop after --gemms and --chains")
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU (emulated FP8 GEMMs)")
    ap.add_argument("--tiny", action="store_true", help="batch 4, 16 samples, 2 s: checks every stage runs")
    args = ap.parse_args()
    if args.tiny:
        args.batch, args.samples, args.seconds = 4, 16, 2.0
    faulthandler.dump_traceback_later(args.budget + 120, exit=False)  # a stuck stage shows where it is
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks for a GPU
    import gpu_h200
    import torch

    gpu_h200.SAMPLES = args.samples  # the harness runs' synthetic set: the one prepared here
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    figures.update(date=stamp(), machine=machine(), gpu=gpu, torch=torch.__version__)
    print(f"resnet50 fp8, pytorch {torch.__version__} on {gpu}, {machine()}, {stamp()}; SYNTHETIC data", flush=True)
    if not args.cpu and torch.cuda.is_available() and torch.cuda.get_device_capability(0) < (8, 9):
        raise SystemExit(f"{gpu}: FP8 needs compute capability 8.9 or later")

    prep = workspace("bench-fp8-prepare", dataset={"synthetic": {"samples": args.samples}})
    data = images(prep)
    model = prep.bench.model_file(prep.model_dir)
    calibration = prep.bench.calibration_batches(prep.dataset_dir, prep.samples())
    n_cal = sum(len(c) for c in calibration)
    say("calibration", f"SYNTHETIC: the synthetic set's first {n_cal} images (not MLPerf's calibration list)")
    batch = min(args.batch, len(data))

    if args.gemms is not None:
        tiles = MORE_TILES if args.gemms == ["wide"] else args.gemms or TILES
        stage("fp8 convolution shapes", args.budget, lambda: gemms(batch, tiles, args.cpu))
    if args.chains is not None:
        stage("fp8 chained pairs", args.budget, lambda: chains(batch, args.chains or CHAIN_TILES, args.cpu))
    if args.parts_only:
        return report()
    stage("accuracy gate", args.budget, lambda: accuracy(model, data, batch, calibration, args.variants))
    rates: dict[str, float] = {}
    fp16 = stage(
        "plain loop fp16", args.budget, lambda: plain(model, data, batch, "fp16", calibration, args.cpu, "fp16")
    )
    for name in args.variants:
        mode = set_variant(name)
        rate = stage(
            f"plain loop fp8 {name}",
            args.budget,
            lambda name=name, mode=mode: plain(model, data, batch, "fp8", calibration, args.cpu, f"fp8 {name}", mode),
        )
        if rate:
            rates[name] = rate
            if fp16:
                say(f"fp8 {name} / fp16, plain loop", f"{rate / fp16:.3f}")
    figures.update(plainFp16=fp16, plainFp8=rates)
    best = max(rates, key=lambda k: rates[k]) if rates else "1x1"
    best_mode = set_variant(best)

    def sustained() -> float:
        """The fastest variant's loop for as long as a harness run: the harness's fair measure."""
        return plain(model, data, batch, "fp8", calibration, args.cpu, f"fp8 {best}", best_mode, args.seconds)

    held = stage(f"plain loop fp8 {best}, sustained", args.budget, sustained)
    figures.update(plainSustained=held)

    def offline(instances: int | None) -> None:
        qps = rates.get(best, 1000.0)
        tag, each = f"fp8-i{instances or 'default'}", f", {instances} instances" if instances else ""
        got, validity = harness("Offline", batch, args.seconds, qps, best_mode, tag, instances, precision="fp8")
        say(
            f"harness Offline fp8 ({best}), batch {batch}{each}, {args.seconds:.0f} s",
            f"{got:,.0f} samples/s {validity}",
        )
        if best in rates:
            say(f"harness / plain loop (same variant{each})", f"{got / rates[best]:.3f}")
        if held:
            say(f"harness / sustained plain loop ({args.seconds:.0f} s{each})", f"{got / held:.3f}")
        say(f"harness Offline / TensorRT per H200 ({TENSORRT_H200:,.0f}){each}", f"{got / TENSORRT_H200:.3f}")
        figures.setdefault("offline", {})[str(instances or "default")] = (got, validity)
        figures.update(variant=best)

    for count in args.instances or [None]:
        stage(f"harness Offline fp8{f', {count} instances' if count else ''}", args.budget, lambda c=count: offline(c))

    def server() -> None:
        import gpu_h200

        ws = workspace(
            "bench-fp8-server",
            backend="pytorch",
            precision="fp8",
            category="datacenter",
            scenarios=["Server"],
            system={"gpuCount": 0} if args.cpu else gpu_h200.GPU,
            tune=True,
            dataset={"synthetic": {"samples": args.samples}},
            loadgen={"minDurationMs": int(args.seconds * 1000), "minQueryCount": 1},
        )
        got = tuned_server(ws, args.probe_seconds, 6, lambda text: say(f"harness Server fp8 ({best}), 15 ms", text))
        figures.update(server=got)

    if not args.no_server:
        stage("harness Server fp8, tuned", args.budget, server)
    if not args.cpu and not args.no_profile:
        stage("profile fp8", args.budget, lambda: profile(model, batch, "fp8", calibration, top=15))
    report()


def report() -> None:
    """The run's figures as a table, and to $OUT/gpu_fp8.json where $OUT is set."""
    faulthandler.cancel_dump_traceback_later()
    print("\n| what | figure |\n|---|---|")
    for line in figures.get("lines", []):
        label, _, value = line.partition(": ")
        print(f"| {label} | {value} |")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_fp8.json").write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
