"""dlrm's collate of one GPU batch: the host work per batch that held the H200 harness to 0.38 of
its plain loop (BENCHMARKS.md).

    PYTHONPATH=harness:benchmarks .venv/bin/python benchmarks/dlrm_collate.py [--users 249] [--rows 263] [--rounds 5]

Times ``batching.collate`` on ``--users`` synthetic users of ``--rows`` rows (a 65,536-row batch by
default) against the whole batch concatenated and then transposed at once (the collate before
2026-12-05, written out here as the baseline), alternating, and checks they give the same arrays.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np
from _common import machine, stamp
from mlperf_harness.benchmarks.dlrm import batching
from mlperf_harness.benchmarks.dlrm.criteo import DENSE, SPARSE


def whole_batch(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    dense = np.concatenate([s["dense_x"] for s in samples])
    ids = np.concatenate([s["indices"] for s in samples])
    rows = len(dense)
    return {
        "dense_x": np.ascontiguousarray(dense, dtype=np.float32),
        "offsets": np.broadcast_to(np.arange(rows, dtype=np.int64), (SPARSE, rows)).copy(),
        "indices": np.ascontiguousarray(ids.T, dtype=np.int64),
    }


def millis(fn: Callable[[], object], reps: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=249)
    ap.add_argument("--rows", type=int, default=263)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    samples = [
        {
            "dense_x": rng.random((args.rows, DENSE), dtype=np.float32),
            "indices": rng.integers(0, 1 << 30, (args.rows, SPARSE), dtype=np.int32),
        }
        for _ in range(args.users)
    ]
    got, want = batching.collate(samples), whole_batch(samples)
    assert all(np.array_equal(got[k], want[k]) for k in want), "collate differs from the baseline"
    print(f"dlrm collate, {args.users} users x {args.rows} rows, {machine()}, {stamp()}")
    ratios = []
    for r in range(args.rounds):
        old, new = millis(lambda: whole_batch(samples)), millis(lambda: batching.collate(samples))
        ratios.append(new / old)
        print(f"  round {r + 1}: whole batch {old:.2f} ms, collate {new:.2f} ms, ratio {new / old:.3f}")
    print(f"collate / whole batch, median of {args.rounds}: {float(np.median(ratios)):.3f}")


if __name__ == "__main__":
    main()
