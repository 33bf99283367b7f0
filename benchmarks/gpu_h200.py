"""resnet50 on one NVIDIA GPU through the harness (pytorch backend): the whole measurement in one go.

    python3 benchmarks/gpu_h200.py [--batch 1024] [--server-batch 128] [--seconds 20] [--compile off]
                                   [--sweep] [--server-qps 20000 30000 ...]
    python3 benchmarks/gpu_h200.py --profile          # only: GPU time per kernel of one batch

1. cuda-python buffers and streams (the TensorRT backend's half that needs no TensorRT): a round
   trip and the pinned host-to-device copy rate.
2. Accuracy first: the FP32 model (no TF32) on the GPU against the pipeline the harness runs
   (fp16, fused convolutions, CUDA graphs, compile if on, samples resident on the GPU), on the
   synthetic samples and on fresh random inputs: relative error of the softmax output and top-1
   agreement; and the FP32 GPU model against onnxruntime on the CPU.
3. The plain loop: the same pipeline's CUDA graph replayed back to back at the batch size on
   device-resident inputs, timed with CUDA events: what the GPU does without LoadGen or the SUT.
   ``--sweep`` also times the variants (fusion off/on, compile) at several batch sizes.
4. The harness: LoadGen Offline (shortened to ``--seconds``) and Server at 15 ms for each of
   ``--server-qps`` (or a search from the Offline figure), highest VALID reported.

Synthetic data and a random-weight ResNet-50 of the real architecture: figures are the GPU's,
not a submission's. Prints a table last; writes the figures to $OUT/gpu_h200.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import gpu_profile, images, machine, print_profile, stamp, workspace
from mlperf_harness import steps
from mlperf_harness.backends.torch_backend import REWRITES, PyTorchBackend
from mlperf_harness.benchmarks.resnet50 import INPUT

ANCHORS = {
    "TensorRT 1x H100 (v4.0) Offline": 88_714.0,
    "TensorRT 8x H200 (v4.1) Offline, per GPU": 756_960.0 / 8,
    "INT8 physical limit (8.2 GFLOP/image)": 240_000.0,
}
SOFTMAX = "softmax_tensor:0"  # the model's probabilities, for accuracy against FP32
ALL = ",".join(REWRITES)
GPU = {"gpuProduct": "NVIDIA-H200", "gpuCount": 1}
SAMPLES = 1024
rows_out: list[tuple[str, str]] = []


T0 = time.perf_counter()


def say(label: str, value: str) -> None:
    rows_out.append((label, value))
    print(f"  [{time.perf_counter() - T0:5.0f} s] {label}: {value}", flush=True)


def backend(
    model: Path,
    batch: int,
    precision: str,
    compile_mode: str,
    output: str,
    rewrites: str = ALL,
    calibration: list[np.ndarray] | None = None,
    use_graphs: bool | None = None,
) -> Any:
    """The harness's pytorch backend loaded as the harness loads it; ``calibration``: the batches
    fp8 takes its activation ranges from (an engine built by build-engine has them in a file)."""
    os.environ["MLPERF_TORCH_REWRITES"] = rewrites
    b = PyTorchBackend(use_graphs)
    b.compile_mode = compile_mode
    b.calibration_batches = calibration
    b.load(model, batch, precision, outputs=[output])
    return b


def release(b: Any) -> None:
    import torch

    b.close()
    if torch.cuda.is_available():  # gpu_fp8.py's dry run on the CPU shares this
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def cuda_buffers_check() -> None:
    from mlperf_harness.backends import cuda_buffers as cb

    cb.self_test()
    stream, buf = cb.Stream(), cb.DeviceBuffer((256, 3, 224, 224), "int8")
    buf.host[:] = 1
    buf.to_device(stream)
    stream.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        buf.to_device(stream)
    stream.synchronize()
    rate = 20 * buf.nbytes / (time.perf_counter() - start) / 1e9
    buf.close()
    stream.close()
    say("cuda-python pinned host-to-device copy (TensorRT backend's buffers)", f"{rate:.1f} GB/s")


def accuracy_check(model: Path, data: np.ndarray, batch: int, precision: str, compile_mode: str) -> dict[str, float]:
    """Softmax of the harness's pipeline vs the FP32 model, same inputs; fresh random inputs too.
    The reference runs first: loading an fp16 backend allows TF32 process-wide."""
    import onnxruntime as ort

    rng = np.random.default_rng(int(time.time()))
    random_inputs = (rng.standard_normal((batch, *data.shape[1:])) * 60).astype(np.float32)
    sets = {"synthetic samples": data[:batch], "random inputs": random_inputs}
    ref = backend(model, batch, "fp32", "off", "softmax_tensor:0")
    wants = {name: ref.predict({INPUT: x})[SOFTMAX].astype(np.float64) for name, x in sets.items()}
    out: dict[str, float] = {}
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    cpu = sess.run(["softmax_tensor:0"], {"input_tensor:0": data[:256]})[0]
    gpu32 = wants["synthetic samples"][:256]
    out["fp32 gpu vs onnxruntime relErr"] = float(np.linalg.norm(gpu32 - cpu) / np.linalg.norm(cpu))
    out["fp32 gpu vs onnxruntime top-1"] = float((cpu.argmax(1) == gpu32.argmax(1)).mean() * 100)
    rel32, top32 = out["fp32 gpu vs onnxruntime relErr"], out["fp32 gpu vs onnxruntime top-1"]
    say("FP32 GPU (no TF32) vs onnxruntime CPU", f"rel err {rel32:.2e}, top-1 agreement {top32:.2f} %")
    release(ref)
    fast = backend(model, batch, precision, compile_mode, "softmax_tensor:0")
    fast.reserve_samples(batch)
    fast.warmup({})
    for name, x in sets.items():
        want = wants[name]
        fast.stage_samples({INPUT: x})
        got = fast.predict_rows(np.arange(len(x)))[SOFTMAX].astype(np.float64)
        again = fast.predict_rows(np.arange(len(x))[::-1])[SOFTMAX][::-1]  # same samples, other rows order
        if not np.allclose(again, got, atol=1e-3):
            raise SystemExit(f"accuracy check FAILED on {name}: a second run in another order differs")
        rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        agree = float((got.argmax(1) == want.argmax(1)).mean() * 100)
        say(f"accuracy vs FP32 ({name}, {precision})", f"rel err {rel:.2e}, top-1 agreement {agree:.2f} %")
        out[f"relErr {name}"] = rel
        out[f"top1Agreement {name}"] = agree
        if not np.isfinite(got).all() or rel > 2e-2:
            raise SystemExit(f"accuracy check FAILED on {name}: rel err {rel:.3e} (tolerance 2e-2)")
    release(fast)
    return out


def plain_loop(
    model: Path,
    data: np.ndarray,
    batch: int,
    precision: str,
    compile_mode: str,
    rewrites: str = ALL,
    calibration: list[np.ndarray] | None = None,
) -> float:
    """Graph replays of the harness's pipeline, back to back, events timed: images/s."""
    b = backend(model, batch, precision, compile_mode, "ArgMax:0", rewrites, calibration)
    rate = replay_rate(b, data, batch)
    release(b)
    return rate


def replay_rate(b: Any, data: np.ndarray, batch: int, seconds: float = 0.0) -> float:
    """A loaded backend's CUDA graph of ``batch`` rows of ``data`` (resident), replayed back to
    back: the median of three windows of 20 replays; with ``seconds``, windows until that long
    has passed, and the rate over all of them (sustained, as a harness run of that length keeps
    the GPU busy: clocks that fall under a long load show here too; the first and last windows'
    rates are printed)."""
    import torch

    b.reserve_samples(len(data))
    b.stage_samples({INPUT: data})
    graph, static_in, _ = b._graph_for(batch)
    static_in.copy_(torch.randint(0, len(data), (batch,), device=static_in.device))
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    reps, times = 20, []
    while len(times) < 3 or sum(times) < seconds:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    if not seconds:
        return reps * batch / sorted(times)[1]
    first, last = (reps * batch / t for t in (times[0], times[-1]))
    print(f"    sustained {sum(times):.1f} s: first window {first:,.0f}/s, last {last:,.0f}/s", flush=True)
    return reps * batch * len(times) / sum(times)


def profile(
    model: Path, batch: int, precision: str, calibration: list[np.ndarray] | None = None, top: int = 20
) -> None:
    """Where one batch's GPU time goes: the pipeline's ops run once eagerly under torch's
    profiler (the same kernels its CUDA graph replays), GPU time per op, largest first."""
    import torch

    b = backend(model, batch, precision, "off", "ArgMax:0", calibration=calibration)
    x = torch.randn(batch, max(3, b._channels), 224, 224, device="cuda").to(b._dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            b._run(x)
        torch.cuda.synchronize()
        print_profile(gpu_profile(lambda: b._run(x), top), f"one batch of {batch}")
    release(b)


def harness(
    scenario: str,
    batch: int,
    seconds: float,
    qps: float,
    compile_mode: str,
    tag: str,
    instances: int | None = None,
    gpus: int = 1,
    precision: str = "fp16",
) -> tuple[float, str]:
    key = "expectedQps" if scenario == "Offline" else "targetQps"
    ws = workspace(
        f"bench-gpu-{scenario}-{tag}",
        backend="pytorch",
        precision=precision,
        batchSize=batch,
        category="datacenter",
        scenarios=[scenario],
        system={**GPU, "gpuCount": gpus},
        dataset={"synthetic": {"samples": SAMPLES}},
        loadgen={"minDurationMs": int(seconds * 1000), "minQueryCount": 1, key: qps},
        instancesPerDevice=instances,
    )
    shutil.rmtree(ws.run_dir, ignore_errors=True)
    os.environ["MLPERF_TORCH_COMPILE"] = compile_mode
    os.environ["MLPERF_TORCH_REWRITES"] = ALL  # the harness runs the default pipeline
    steps.build_engine(ws, scenario)
    print(f"  [{time.perf_counter() - T0:5.0f} s] {scenario} at {qps:,.0f}: starting", flush=True)
    faulthandler.dump_traceback_later(seconds * 3 + 60)  # a stuck run shows where it is
    [r] = steps.run_harness(ws, scenario, "PerformanceOnly").results
    faulthandler.cancel_dump_traceback_later()
    value = (r.samplesPerSecond or 0.0) if scenario == "Offline" else qps
    p99 = (r.latencyNs.p99 or 0) / 1e6 if r.latencyNs else 0.0
    line = f"{r.samplesPerSecond or 0:,.0f}/s {r.resultValidity} p99 {p99:.1f} ms on {r.device}"
    print(f"    {scenario} batch {batch} instances {instances or 'default'} qps {qps:,.0f}: {line}", flush=True)
    return value, r.resultValidity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--server-batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--server-seconds", type=float, default=10.0)
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--compile", default="off", choices=["off", "default", "max-autotune"])
    ap.add_argument("--sweep", action="store_true", help="time the variants at several batch sizes first")
    ap.add_argument("--sweep-batches", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--sweep-compile", action="store_true", help="add torch.compile (default mode, unfused) at --batch")
    ap.add_argument("--server-qps", type=float, nargs="*", default=None)
    ap.add_argument("--server-instances", type=int, default=None, help="instances per GPU for Server")
    ap.add_argument("--server-grid", nargs="*", default=None, help="only Server probes: batch:instances:qps ...")
    ap.add_argument("--profile", action="store_true", help="only the GPU time per kernel of one batch")
    args = ap.parse_args()
    import torch

    if args.profile:
        small = workspace("bench-gpu-profile", dataset={"synthetic": {"samples": 8}})
        profile(small.bench.model_file(small.model_dir), args.batch, args.precision)
        return

    figures: dict[str, Any] = {"date": stamp(), "machine": machine(), "gpu": torch.cuda.get_device_name(0)}
    print(f"resnet50 pytorch {torch.__version__} on {figures['gpu']}, {machine()}, {stamp()}", flush=True)
    prep = workspace("bench-gpu-prepare", dataset={"synthetic": {"samples": SAMPLES}})
    data = images(prep)
    model = prep.bench.model_file(prep.model_dir)

    if args.server_grid:
        for i, probe in enumerate(args.server_grid):
            batch, inst, qps = probe.split(":")
            harness("Server", int(batch), args.server_seconds, float(qps), args.compile, f"g{i}", int(inst))
        return
    cuda_buffers_check()
    figures["accuracy"] = accuracy_check(model, data, min(args.batch, len(data)), args.precision, args.compile)

    if args.sweep:
        # The rewrites added one at a time at the run's batch size, then all of them at the others.
        variants = [(",".join(REWRITES[:k]) or "none", "off", [args.batch]) for k in range(len(REWRITES))]
        variants.append((ALL, "off", args.sweep_batches))
        if args.sweep_compile:  # compiles take minutes: at the run's batch size only
            variants.append(("none", "default", [args.batch]))
        sweep = {}
        for rewrites, mode, batches in variants:
            label = f"rewrites {rewrites}" + (f", compile {mode}" if mode != "off" else "")
            for batch in batches:
                t0 = time.perf_counter()
                v = plain_loop(model, data, batch, args.precision, mode, rewrites)
                sweep[f"{label} b{batch}"] = v
                say(
                    f"plain loop {label}, batch {batch}",
                    f"{v:,.0f} images/s ({time.perf_counter() - t0:.0f} s incl. setup)",
                )
        figures["sweep"] = sweep

    plain = plain_loop(model, data, args.batch, args.precision, args.compile)
    say(f"plain loop (graph replays), batch {args.batch}, compile {args.compile}", f"{plain:,.0f} images/s")
    offline, validity = harness("Offline", args.batch, args.seconds, plain, args.compile, "offline")
    say(f"harness Offline, batch {args.batch}, {args.seconds:.0f} s", f"{offline:,.0f} samples/s {validity}")
    say("harness / plain loop", f"{offline / plain:.3f}")
    figures.update(plain=plain, offline=offline, offlineValidity=validity, ratio=offline / plain)

    targets = args.server_qps or [round(offline * f, -2) for f in (0.6, 0.7, 0.8, 0.9)]
    best = 0.0
    for i, qps in enumerate(targets):
        got, v = harness(
            "Server", args.server_batch, args.server_seconds, qps, args.compile, f"s{i}", args.server_instances
        )
        if v == "VALID":
            best = max(best, got)
    say(
        f"harness Server, batch {args.server_batch}, 15 ms, highest VALID of {len(targets)} targets", f"{best:,.0f} QPS"
    )
    figures["serverBestValidQps"] = best
    for name, anchor in ANCHORS.items():
        say(f"Offline / {name} ({anchor:,.0f})", f"{offline / anchor:.3f}")

    print("\n| what | figure |\n|---|---|")
    for label, value in rows_out:
        print(f"| {label} | {value} |")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_h200.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
