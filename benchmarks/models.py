"""The benchmarks beside resnet50, each through the harness and through a plain loop in the same run.

    python3 benchmarks/models.py                       # on one NVIDIA GPU: full-size models, pytorch fp16
    python3 benchmarks/models.py --cpu                 # on this CPU: small models, onnxruntime fp32
    python3 benchmarks/models.py --cpu --backend pytorch   # the GPU path's code on this CPU (fp32)
        [--benchmarks bert dlrm ...] [--samples 64] [--seconds 10] [--size small|full] [--server [--max-probes 6]]
        [--batch rnnt=2048 ...] [--server-batch dlrm=16384 ...] [--workers dlrm=4 ...] [--server-only]

Per benchmark:
1. The work directory: the spec's synthetic data and synthetic model (`model.synthetic.size`), prepared
   by the harness's own steps (the answers come from the FP32 model on the CPU).
2. The null backend through the harness, Offline: what the harness itself costs per sample.
3. The plain loop: the benchmark's own batches (its collate and infer, every model part loaded by the
   backend), one after another for half of --seconds: the backend without LoadGen or the SUT.
4. On a GPU, what limits it: one batch's wall time against its kernels' GPU time under torch's
   profiler, the host's launches, copies and waits, and the largest kernels (--no-profile: skip).
5. The harness: LoadGen Offline for --seconds at that batch size, with the same backend.

With ``--server``, then the tuner's highest VALID Server target (v1.0 datacenter; 3d-unet has no Server)
and a fresh Server run of --seconds at 0.9 of it.

Synthetic data and random weights of the real architectures: the machine's figures, not a submission's.
Prints a table last; writes $OUT/models.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import gpu_profile, machine, print_profile, stamp, tuned_server, workspace
from mlperf_harness import steps
from mlperf_harness.backends import get_backend
from mlperf_harness.benchmarks.base import MODEL
from mlperf_harness.config import build_config
from mlperf_harness.loadgen.runner import keep_samples

# (suite, category, GPU batch, CPU batch); the anchor: the best published per-GPU Offline figure of the round.
SETUP: dict[str, tuple[str, str, int, int]] = {
    "bert": ("v6.1", "edge", 64, 8),
    "3d-unet": ("v6.1", "edge", 1, 1),
    "ssd-resnet34": ("v1.0", "datacenter", 16, 4),
    # rnnt at 64 (2026-12-05): 909 decoder step replays, 43,491 kernels of 2.2 us on average a batch;
    # kernels that small take about as long for 512 rows. NVIDIA's A100 harness runs 2048.
    "rnnt": ("v1.0", "datacenter", 512, 8),
    # dlrm counts rows: 2,048 (2026-12-05, H100) kept the GPU 8 % busy (0.25 ms of kernels in 3 ms a
    # batch); the harness config's H200 Offline batch is 65,536 (NVIDIA's v1.0 A100 harness: 315,000).
    "dlrm": ("v1.0", "datacenter", 65536, 2048),
}
# 3d-unet's on a GPU with its full-size synthetic cases (below): KiTS19's 43 preprocessed shapes, 64.2
# windows a case, so its cases/s compares with the published figure.
# v1.0's three: NVIDIA's DGX-A100 (8x A100-SXM-80GB, TensorRT) in inference_results_v1.0, divided by 8.
ANCHORS = {
    "bert": ("bert-99 Offline, H200 v4.1 per GPU", 9_224.0),
    "3d-unet": ("3d-unet-99 Offline, H200 v4.1 per GPU", 6.84),
    "ssd-resnet34": ("ssd-resnet34 Offline, A100 v1.0 per GPU", 7_879.48 / 8),
    "dlrm": ("dlrm-99 Offline, A100 v1.0 per GPU", 2.4623e6 / 8),
    "rnnt": ("rnnt Offline, A100 v1.0 per GPU", 105_677 / 8),
}
# On an H100 (the device tool lends one where no H200 comes), the same benchmarks' 1x H100 figures (v4.0).
H100_ANCHORS = {
    "bert": ("bert-99 Offline, H100 v4.0 per GPU", 9_082.0),
    "3d-unet": ("3d-unet-99 Offline, H100 v4.0 per GPU", 6.44),
}
# The same system's Server figures (scheduled samples/s), for the tuned Server targets.
SERVER_ANCHORS = {
    "ssd-resnet34": ("ssd-resnet34 Server, A100 v1.0 per GPU", 7_654.41 / 8),
    "dlrm": ("dlrm-99 Server, A100 v1.0 per GPU", 2_302_572.02 / 8),
    "rnnt": ("rnnt Server, A100 v1.0 per GPU", 103_985.94 / 8),
}
# The synthetic dataset on a GPU where it differs from --samples of the default size: 3d-unet's cases
# have KiTS19's own shapes (16 of its 43 inference cases, spread so that they average the 43's 64.2
# windows a case; all 43 would take the device machine minutes more to generate; the CI-small ones
# have 2.4 windows a case).
GPU_DATASET: dict[str, dict[str, Any]] = {"3d-unet": {"size": "full", "samples": 16}}
BATCH: dict[str, int] = {}  # --batch NAME=N: this run's batch where it is not SETUP's
SERVER_BATCH: dict[str, int] = {}  # --server-batch NAME=N: the Server search's batch where it is not the above
WORKERS: dict[str, int] = {}  # --workers NAME=N: backend instances where not the harness config's
GPU = {"gpuProduct": "NVIDIA-H200", "gpuCount": 1}
CPU = {"gpuCount": 0}
T0 = time.perf_counter()


def say(text: str) -> None:
    print(f"  [{time.perf_counter() - T0:5.0f} s] {text}", flush=True)


def _groups(bench: Any, store: Any, batch: int, most: int = 8) -> list[list[int]]:
    """``most`` full batches of sample indices (more where it takes more to use every sample once:
    3d-unet's cases of many sizes, one a batch) as the SUT forms them from an Offline query:
    ``batch`` samples, or samples up to ``batch`` rows of the benchmark's cost tensor (dlrm's users
    of many rows), the store's samples taken in turn and again (LoadGen repeats its performance
    set likewise), so the loop's batches are as full as the harness's however few samples there are.
    In order of length where the SUT sorts a query so (``Benchmark.lengths``: rnnt's frames, bert's
    real tokens), so the loop's batches pad about as little as the harness's."""
    lengths = bench.lengths(store)
    order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(store.count)
    groups: list[list[int]] = [[]]
    rows = 0
    for k in range(most * max(batch, 1) + store.count):
        i = int(order[k % store.count])
        cost = len(store.sample(i)[bench.cost_tensor]) if bench.cost_tensor else 1
        if groups[-1] and rows + cost > batch:
            if len(groups) >= most and k >= store.count:
                break
            groups.append([])
            rows = 0
        groups[-1].append(i)
        rows += cost
    return groups


def plain_loop(ws: Any, batch: int, seconds: float, backend: str, precision: str, prof: bool) -> dict[str, Any]:
    bench, store = ws.bench, ws.samples()
    parts = {}
    for part, path in bench.model_files(ws.model_dir).items():
        b = get_backend(backend)
        outputs = [s.name for s in bench.outputs] if part == MODEL else ()
        b.load(path, batch, precision, outputs=outputs)
        parts[part] = b
    groups = _groups(bench, store, batch)  # full batches, samples in turn (3d-unet's cases differ in size)
    counts = [len(group) for group in groups]
    # The samples on the device where the harness keeps them there: batches are rows.
    staged = keep_samples(build_config(ws.spec, "Offline"), bench, parts, store.count)
    if staged:
        parts[MODEL].stage_samples(store.fixed)
        calls = [functools.partial(parts[MODEL].predict_rows, np.asarray(group)) for group in groups]
    else:
        batches = [bench.collate([store.sample(i) for i in group]) for group in groups]
        calls = [functools.partial(bench.infer, parts, feeds) for feeds in batches]
    for call in calls:
        call()  # warm: kernels chosen, graphs captured where the shapes allow
    first = next(iter(parts.values()))
    general = getattr(first, "_general", first)
    n, k, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        calls[k % len(calls)]()  # answers come back: each call ends the GPU's work
        n += counts[k % len(calls)]
        k += 1
    rate = n / (time.perf_counter() - start)
    facts = {"graphed": getattr(general, "graphed", None), "eager": getattr(general, "eager_reason", "")}
    facts["staged"] = staged
    facts["attention"] = getattr(general, "attention", None)
    facts["linears"], facts["gelus"] = getattr(general, "linears", None), getattr(general, "gelus", None)
    facts["lookups"] = getattr(general, "lookups", None)
    facts["memory"] = getattr(general, "memory", None)  # after its load: host peak RSS, GPU allocated and peak
    if prof:
        facts["profile"] = limits(calls[0], counts[0])
    for b in parts.values():
        b.close()
    return {"plainSamplesPerSecond": rate, **facts}


def limits(call: Callable[[], Any], count: int) -> dict[str, Any]:
    """What limits one batch (``call``): its wall time without the profiler (median of 5 calls,
    answers back on the host) against the GPU time of its kernels under the profiler. A GPU busy
    share well under 1 means the host (Python, launches, copies, waits) sets the pace, not the kernels."""
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        call()
        walls.append(time.perf_counter() - t)
    figures = gpu_profile(call)
    wall_ms = sorted(walls)[2] * 1000
    figures.update(batchSamples=count, wallMs=wall_ms, gpuBusy=figures["gpuMs"] / wall_ms)
    print_profile(figures, f"one batch of {count} samples (wall {wall_ms:.2f} ms without the profiler)")
    return figures


def harness_offline(ws: Any) -> tuple[float, str]:
    shutil.rmtree(ws.run_dir, ignore_errors=True)
    steps.build_engine(ws, "Offline")
    [r] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    return r.samplesPerSecond or 0.0, r.resultValidity


def _spec(name: str, samples: int, size: str, cpu: bool, backend: str) -> dict[str, Any]:
    """The benchmark's run spec on this machine: its SETUP round and batch (or --batch's), the
    synthetic data and model."""
    suite, category, gpu_batch, cpu_batch = SETUP[name]
    return {
        "benchmark": name,
        "suite": suite,
        "category": category,
        "backend": backend,
        "precision": "fp16" if backend == "pytorch" and not cpu else "fp32",
        "batchSize": BATCH.get(name) or (cpu_batch if cpu else gpu_batch),
        "system": CPU if cpu else GPU,
        # On the CPU one instance, as the loop (two would split the two cores' threads between them).
        "instancesPerDevice": 1 if cpu else WORKERS.get(name),
        "model": {"synthetic": {"size": size}},
        "dataset": {"synthetic": {"samples": samples, **({} if cpu else GPU_DATASET.get(name, {}))}},
    }


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


def measure(
    name: str, samples: int, seconds: float, size: str, cpu: bool, backend: str, prof: bool = False
) -> dict[str, Any]:
    spec = _spec(name, samples, size, cpu, backend)
    batch, precision = spec["batchSize"], spec["precision"]
    t = time.perf_counter()
    ws = workspace(f"gpu-{name}", **spec)
    say(f"{name}: data, full-size model and preprocessing in {time.perf_counter() - t:.0f} s")
    samples = spec["dataset"]["synthetic"]["samples"]  # GPU_DATASET's where it sets them
    out: dict[str, Any] = {"benchmark": name, "batch": batch, "samples": samples, "size": size, "backend": backend}
    null = {**spec, "backend": "null", "precision": "fp32"}
    # 200,000 samples: 2 s at 100,000/s, longer where the harness is slower (its rate is the figure).
    loadgen = {"minDurationMs": 2000, "minQueryCount": 1, "expectedQps": 100_000}
    out["nullSamplesPerSecond"], _ = harness_offline(workspace(f"null-{name}", **null, loadgen=loadgen))
    say(f"{name}: null backend through the harness {out['nullSamplesPerSecond']:,.0f} samples/s")
    out.update(plain_loop(ws, batch, seconds / 2, backend, precision, prof))
    say(f"{name}: plain loop {out['plainSamplesPerSecond']:,.1f} samples/s ({out})")
    # Offline's one query is sized from the expected rate: above the harness's, the run lasts its minimum.
    # W workers overlap one's host work with another's GPU work, up to W plain loops (3d-unet's 4 on an
    # H200 ran 3.5x the loop); more only lengthens the run (dlrm's 2 at 6x: 176 s for a 10 s minimum).
    out["workers"] = build_config(ws.spec, "Offline").workers
    expected = (out["workers"] + 0.5) * out["plainSamplesPerSecond"]
    loadgen = {"minDurationMs": int(seconds * 1000), "minQueryCount": 1, "expectedQps": expected}
    out["harnessSamplesPerSecond"], out["validity"] = harness_offline(workspace(f"gpu-{name}", **spec, loadgen=loadgen))
    out["ratio"] = out["harnessSamplesPerSecond"] / out["plainSamplesPerSecond"]
    anchors = {**ANCHORS, **H100_ANCHORS} if not cpu and "H100" in _gpu_name() else ANCHORS
    if name in anchors and not cpu:
        label, anchor = anchors[name]
        out["anchor"], out["anchorRatio"] = label, out["harnessSamplesPerSecond"] / anchor
    rate = out["harnessSamplesPerSecond"]
    say(f"{name}: harness Offline {rate:,.1f} samples/s {out['validity']}, ratio {out['ratio']:.3f}")
    return out


def server(name: str, args: argparse.Namespace, size: str, backend: str) -> dict[str, Any]:
    """The highest VALID Server target the tuner finds (v1.0 datacenter: the round where every
    benchmark but 3d-unet has a Server), then a fresh run of ``seconds`` at 0.9 of it."""
    t = time.perf_counter()
    ws = workspace(
        f"server-{name}",
        **{
            **_spec(name, args.samples, size, args.cpu, backend),
            **({"batchSize": SERVER_BATCH[name]} if name in SERVER_BATCH else {}),
            "suite": "v1.0",
            "category": "datacenter",
            "scenarios": ["Server"],
            "tune": True,
            "loadgen": {"minDurationMs": int(args.seconds * 1000), "minQueryCount": 1},
        },
    )
    say(f"{name}: Server set up in {time.perf_counter() - t:.0f} s")
    out = tuned_server(ws, args.probe_seconds, args.max_probes, lambda text: say(f"{name}: {text}"))
    if name in SERVER_ANCHORS and not args.cpu:
        label, anchor = SERVER_ANCHORS[name]
        out["serverAnchor"], out["serverAnchorRatio"] = label, out["serverTuned"] / anchor
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", nargs="*", default=list(SETUP), choices=list(SETUP))
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", choices=("full", "small"), default=None, help="default: full on a GPU, small with --cpu")
    ap.add_argument("--cpu", action="store_true", help="on this CPU, fp32 (small models by default)")
    ap.add_argument("--backend", default=None, help="default: onnxruntime with --cpu, else pytorch")
    ap.add_argument("--no-profile", action="store_true", help="on a GPU: skip the profile of one batch")
    server_help = "also the tuner's highest VALID Server target, v1.0 datacenter (not 3d-unet)"
    ap.add_argument("--server", action="store_true", help=server_help)
    only_help = "the Server search alone, without the null backend, plain loop, profile and Offline run"
    ap.add_argument("--server-only", action="store_true", help=only_help)
    ap.add_argument("--probe-seconds", type=float, default=5.0, help="the tuner's Server probes (with --server)")
    ap.add_argument("--max-probes", type=int, default=6, help="the tuner's Server probes at most (with --server)")
    ap.add_argument("--batch", nargs="*", default=[], metavar="NAME=N", help="a batch size (default: SETUP's)")
    batch_help = "the Server search's batch size (default: --batch's or SETUP's)"
    ap.add_argument("--server-batch", nargs="*", default=[], metavar="NAME=N", help=batch_help)
    workers_help = "backend instances per GPU (default: the harness config's)"
    ap.add_argument("--workers", nargs="*", default=[], metavar="NAME=N", help=workers_help)
    args = ap.parse_args()
    args.server = args.server or args.server_only
    tables = (("--batch", args.batch, BATCH), ("--server-batch", args.server_batch, SERVER_BATCH))
    for flag, items, table in (*tables, ("--workers", args.workers, WORKERS)):
        for item in items:
            name, _, n = item.partition("=")
            if name not in SETUP or not n.isdigit() or int(n) < 1:
                ap.error(f"{flag} {item}: expected NAME=N with NAME one of {', '.join(SETUP)} and N a positive integer")
            table[name] = int(n)
    backend = args.backend or ("onnxruntime" if args.cpu else "pytorch")
    size = args.size or ("small" if args.cpu else "full")
    where = machine() if args.cpu else f"{_gpu_name()}, {machine()}"
    print(f"models: {stamp()}, {where}, {backend}, {'cpu fp32' if args.cpu else 'gpu fp16'}, {size}")
    results = []

    def attempt(name: str, what: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """One measurement; its failure is reported (under `what`), the others still measured."""
        try:
            return dict(work())
        except Exception as exc:
            say(f"{name}: {what} FAILED {type(exc).__name__}: {exc}")
            return {what: f"{type(exc).__name__}: {exc}"}

    prof = not args.cpu and not args.no_profile
    for name in args.benchmarks:
        work = functools.partial(measure, name, args.samples, args.seconds, size, args.cpu, backend, prof)
        results.append({"benchmark": name, **({} if args.server_only else attempt(name, "error", work))})
        if args.server and name != "3d-unet" and "error" not in results[-1]:  # 3d-unet has no Server in any round
            results[-1].update(attempt(name, "serverError", functools.partial(server, name, args, size, backend)))
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "models.json").write_text(json.dumps(results, indent=1))
    for r in results:
        if "profile" in r:
            f = r["profile"]
            print(
                f"{r['benchmark']}: one batch {f['wallMs']:.1f} ms wall, {f['gpuMs']:.1f} ms of kernels",
                f"(GPU busy {f['gpuBusy']:.0%})",
            )
    for r in results:
        if "serverError" in r:
            print(f"{r['benchmark']}: Server (v1.0 datacenter) failed: {r['serverError'][:160]}")
        if "serverTuned" in r:
            print(
                f"{r['benchmark']}: Server (v1.0 datacenter) tuned {r['serverTuned']:,.1f} QPS, "
                f"fresh run {r['serverValidity']} p99 {r['serverP99Ms']:.1f} ms"
                + (f"; {r['serverAnchorRatio']:.3f} of {r['serverAnchor']}" if "serverAnchor" in r else "")
            )
    print("\n| benchmark | batch | null backend | plain loop | harness Offline | harness / plain | anchor |")
    for r in results:
        if "error" in r:
            print(f"| {r['benchmark']} | | | failed: {r['error'][:80]} | | | |")
            continue
        if "validity" not in r:  # --server-only
            continue
        anchor = f"{r['anchorRatio']:.3f} of {r['anchor']}" if "anchor" in r else "-"
        head = f"| {r['benchmark']} | {r['batch']} | {r['nullSamplesPerSecond']:,.0f} | "
        print(
            f"{head}{r['plainSamplesPerSecond']:,.1f} | {r['harnessSamplesPerSecond']:,.1f} {r['validity']} | "
            f"{r['ratio']:.3f} | {anchor} |"
        )


if __name__ == "__main__":
    main()
