"""resnet50 Offline through the harness on 1, 2, 4 and 8 GPUs of one node: one LoadGen run per
GPU count, one backend instance (or more) per GPU, and the scaling ratio against one GPU.

    PYTHONPATH=harness:benchmarks python3 benchmarks/gpu_scaling.py [--gpus 1 2 4 8] [--seconds 15]

Needs as many CUDA GPUs as the largest count (NVIDIA H200 by default, as the harness config's
system ids name them). Same synthetic data and model as gpu_h200.py; prints a table last and
writes $OUT/gpu_scaling.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _common import images, machine, stamp, workspace
from gpu_h200 import harness, plain_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--instances", type=int, default=None, help="instances per GPU (default: the harness config's)")
    args = ap.parse_args()
    import torch

    visible = torch.cuda.device_count()
    if max(args.gpus) > visible:
        raise SystemExit(f"--gpus asks for {max(args.gpus)} GPUs, {visible} visible here")
    print(f"resnet50 Offline scaling on {visible}x {torch.cuda.get_device_name(0)}, {machine()}, {stamp()}")
    prep = workspace("bench-gpu-prepare", dataset={"synthetic": {"samples": 1024}})
    one = plain_loop(prep.bench.model_file(prep.model_dir), images(prep), args.batch, "fp16", "off")
    rows = []
    for n in args.gpus:
        got, validity = harness("Offline", args.batch, args.seconds, one * n, "off", f"x{n}", args.instances, gpus=n)
        rows.append({"gpus": n, "samplesPerSecond": got, "validity": validity})
    base = rows[0]["samplesPerSecond"] / rows[0]["gpus"]
    print("\n| GPUs | Offline samples/s | validity | scaling vs 1 GPU |\n|---|---|---|---|")
    for r in rows:
        r["scaling"] = r["samplesPerSecond"] / base
        print(f"| {r['gpus']} | {r['samplesPerSecond']:,.0f} | {r['validity']} | {r['scaling']:.2f}x |")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_scaling.json").write_text(json.dumps({"date": stamp(), "plain1": one, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
