"""Several backend instances in one LoadGen run (one per GPU on a GPU node; here several real
onnxruntime sessions on the CPU): the same answers as one instance, work spread over all of
them, and a slow instance holding up nobody."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness_support import SAMPLES
from mlperf_harness import steps
from mlperf_harness.backends import get_backend
from mlperf_harness.backends.base import Backend
from mlperf_harness.backends.faulty import HostResident, Paced
from mlperf_harness.config import build_config
from mlperf_harness.loadgen.runner import RunOutput, run_loadgen

SERVER = {"category": "datacenter", "loadgen": {"minDurationMs": 500, "minQueryCount": 8, "targetQps": 40}}


def answers(log_dir: Path) -> dict[int, str]:
    """qsl_idx -> response bytes (hex) of an accuracy log."""
    return {int(e["qsl_idx"]): e["data"] for e in json.loads((log_dir / "mlperf_log_accuracy.json").read_text())}


def run(ws: Any, scenario: str, mode: str, factory: Any, **cfg_update: Any) -> RunOutput:
    cfg = build_config(ws.spec, scenario).model_copy(update=cfg_update)
    log_dir = ws.harness_dir(scenario, mode)
    return run_loadgen(cfg, mode, log_dir, ws.bench, ws.samples_path(), ws.model_path(scenario), factory, audit=None)


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
    ws = workspace(
        testModes=["PerformanceOnly"],
        backend="null",
        instancesPerDevice=3,
        batchSize=2,
        loadgen={"minDurationMs": 300, "minQueryCount": 1, "expectedQps": 200},
    )
    out = run(ws, "Offline", "PerformanceOnly", lambda: Paced(get_backend("null"), 0.01))
    assert not out.errors
    assert len(out.instance_samples) == 3 and sum(out.instance_samples) == out.completed
    assert min(out.instance_samples) > 0, out.instance_samples


def test_a_slow_instance_gets_less_work(workspace: Any) -> None:
    """Instance 0 takes 0.2 s a batch, the others 0.01 s (null backends, paced: only the dispatch
    is under test): they take its queued pieces, so the run ends long before an equal split (a
    third of the samples at 0.2 s a batch) would let it."""
    made: list[Backend] = []

    def factory() -> Backend:
        made.append(Paced(get_backend("null"), 0.2 if not made else 0.01))
        return made[-1]

    ws = workspace(
        testModes=["PerformanceOnly"],
        backend="null",
        instancesPerDevice=3,
        batchSize=2,
        loadgen={"minDurationMs": 100, "minQueryCount": 1, "expectedQps": 600},
    )
    out = run(ws, "Offline", "PerformanceOnly", factory)
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

    out = run(ws, "Offline", "AccuracyOnly", factory, startFromDevice=True)
    assert not out.errors and out.completed == SAMPLES
    assert all(b.resident and b.stages >= 1 for b in staged) and sum(b.rows_served for b in staged) == SAMPLES
    reference = workspace(testModes=["AccuracyOnly"])
    [result] = steps.run_harness(reference, "Offline", "AccuracyOnly").results
    assert answers(out.log_dir) == answers(reference.root / result.logDir)


def test_instances_are_spread_over_the_devices(workspace: Any) -> None:
    """devices x instances per device, in device order: what puts one backend on each GPU."""
    made: list[Backend] = []

    def factory() -> Backend:
        made.append(Paced(get_backend("null"), 0.002))
        return made[-1]

    ws = workspace(
        testModes=["PerformanceOnly"],
        backend="null",
        batchSize=2,
        loadgen={"minDurationMs": 100, "minQueryCount": 1, "expectedQps": 200},
    )
    out = run(ws, "Offline", "PerformanceOnly", factory, devices=3, workers=2)
    assert [b.device_index for b in made] == [0, 0, 1, 1, 2, 2]
    assert [b.inner.device_index for b in made] == [0, 0, 1, 1, 2, 2]  # handed on by configure
    assert not out.errors and len(out.instance_samples) == 6
