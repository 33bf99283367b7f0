"""Several backend instances in one LoadGen run (one per GPU on a GPU node; here several real
onnxruntime sessions on the CPU): the same answers as one instance, work spread over all of
them, and a slow instance holding up nobody."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest
from harness_support import SAMPLES, answers, run_direct
from mlperf_harness import steps
from mlperf_harness.backends import get_backend
from mlperf_harness.backends.base import Backend
from mlperf_harness.backends.faulty import HostResident, Paced
from mlperf_harness.backends.null import NullBackend
from mlperf_harness.loadgen.runner import RunOutput

SERVER = {"category": "datacenter", "loadgen": {"minDurationMs": 500, "minQueryCount": 8, "targetQps": 40}}


def paced_nulls(
    workspace: Any, paces: list[float], duration_ms: int, qps: float, **cfg: Any
) -> tuple[RunOutput, list[Paced]]:
    """An Offline run of null backends paced to ``paces`` seconds a batch (the last pace for every
    further instance), batch 2: only the SUT's dispatch is under test."""
    ws = workspace(
        testModes=["PerformanceOnly"],
        backend="null",
        instancesPerDevice=len(paces),
        batchSize=2,
        loadgen={"minDurationMs": duration_ms, "minQueryCount": 1, "expectedQps": qps},
    )
    made: list[Paced] = []

    def factory() -> Backend:
        made.append(Paced(NullBackend(ws.bench.outputs), paces[min(len(made), len(paces) - 1)]))
        return made[-1]

    return run_direct(ws, "Offline", "PerformanceOnly", factory, **cfg), made


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_three_instances_answer_exactly_as_one(workspace: Any, scenario: str) -> None:
    over = SERVER if scenario == "Server" else {}
    logs = {}
    for instances in (1, 3):
        ws = workspace(scenarios=[scenario], testModes=["AccuracyOnly"], instancesPerDevice=instances, **over)
        [result] = steps.run_harness(ws, scenario, "AccuracyOnly").results
        assert result.accuracy == 100.0, result
        logs[instances] = answers(ws.root / result.logDir)
        if instances == 3:
            assert result.device == "3 instances on cpu"
    assert len(logs[1]) == SAMPLES and logs[3] == logs[1]


def test_work_is_spread_over_every_instance(workspace: Any) -> None:
    out, _ = paced_nulls(workspace, [0.01, 0.01, 0.01], 300, 200)
    assert not out.errors
    assert len(out.instance_samples) == 3 and sum(out.instance_samples) == out.completed
    assert min(out.instance_samples) > 0, out.instance_samples


def test_a_slow_instance_gets_less_work(workspace: Any) -> None:
    """Instance 0 takes 0.2 s a batch, the others 0.01 s: they take its queued pieces, so the run
    ends long before an equal split (a third of the samples at 0.2 s a batch) would let it."""
    out, _ = paced_nulls(workspace, [0.2, 0.01, 0.01], 100, 600)
    slow, *fast = out.instance_samples
    assert not out.errors and out.completed >= 60
    assert slow < min(fast) / 3, out.instance_samples
    equal_split_s = (out.completed / 3 / 2) * 0.2
    assert out.wall_s < equal_split_s * 0.75, (out.wall_s, equal_split_s)


@pytest.mark.parametrize("instances", [1, 2])
def test_device_resident_samples_answer_as_gathered_ones(workspace: Any, instances: int) -> None:
    """start_from_device: the SUT hands rows of the staged set instead of gathered samples
    (HostResident stages on the host, standing in for a GPU copy), answers unchanged."""
    ws = workspace(testModes=["AccuracyOnly"], instancesPerDevice=instances)
    staged: list[HostResident] = []

    def factory() -> Backend:
        staged.append(HostResident(get_backend("onnxruntime")))
        return staged[-1]

    out = run_direct(ws, "Offline", "AccuracyOnly", factory, startFromDevice=True)
    assert not out.errors and out.completed == SAMPLES
    assert all(b.resident and b.stages >= 1 for b in staged) and sum(b.rows_served for b in staged) == SAMPLES
    reference = workspace(testModes=["AccuracyOnly"])
    [result] = steps.run_harness(reference, "Offline", "AccuracyOnly").results
    assert answers(out.log_dir) == answers(reference.root / result.logDir)


def test_instances_are_spread_over_the_devices(workspace: Any) -> None:
    """devices x instances per device, in device order: what puts one backend on each GPU."""
    out, made = paced_nulls(workspace, [0.002], 100, 200, devices=3, workers=2)
    assert [b.device_index for b in made] == [0, 0, 1, 1, 2, 2]
    assert [b.inner.device_index for b in made] == [0, 0, 1, 1, 2, 2]  # handed on by configure
    assert not out.errors and len(out.instance_samples) == 6


def test_a_query_is_batched_in_order_of_the_benchmarks_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Benchmark.lengths``: Offline's one query cut into batches of like length (shortest
    first), each sample still answered under its own id."""
    import numpy as np
    from mlperf_harness.benchmarks.base import PendingBenchmark
    from mlperf_harness.loadgen import sut as sut_module

    lengths = np.array([50, 10, 40, 20, 30, 60, 0])
    answered: list[tuple[list[int], list[int]]] = []  # per batch: ids, the lengths answered
    monkeypatch.setattr(sut_module, "respond", lambda ids, out: answered.append((ids.tolist(), list(out))))

    class ByLength(PendingBenchmark):
        def collate(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            return {"length": np.array([s["length"] for s in samples])}

        def infer(self, parts: Any, feeds: Any) -> dict[str, np.ndarray]:
            return dict(feeds)

        def responses(self, outputs: Any, batch: Any) -> Any:
            return [int(n) for n in outputs["length"]]

    qsl = SimpleNamespace(
        length=lengths, cost=None, costs=lambda idx: None, store=SimpleNamespace(ragged=True),
        samples=lambda idx, scratch=None: [{"length": lengths[i]} for i in idx],
    )  # fmt: skip
    backend = SimpleNamespace(consumes_input=True, resident=False)  # infer above is the model
    before = sys.getswitchinterval()
    sut = sut_module.HarnessSUT([{"model": backend}], qsl, ByLength(), batch_size=3)  # type: ignore[arg-type, list-item]
    assert sys.getswitchinterval() == min(before, sut_module.SWITCH_INTERVAL_S)  # while its threads run
    sut.issue([100 + i for i in range(len(lengths))], list(range(len(lengths))))
    sut.stop()
    assert sys.getswitchinterval() == before
    assert not sut.errors
    assert [got for _, got in answered] == [[0, 10, 20], [30, 40, 50], [60]]
    assert all(lengths[i - 100] == n for ids, got in answered for i, n in zip(ids, got, strict=True))
