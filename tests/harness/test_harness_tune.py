"""Target finding on real LoadGen: the null backend paced at 5 ms a batch of 1 in two instances has a
known capacity (at most 400 samples/s, whatever the machine's load), and bert's 130 ms Server bound
leaves room for a busy machine's scheduling delays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness_support import make_spec
from mlperf_harness import steps, tune
from mlperf_harness.backends.base import Backend
from mlperf_harness.backends.faulty import Paced
from mlperf_harness.results import ScenarioResult, StepOutcome, Tuning, TuningProbe
from mlperf_harness.workspace import Workspace

PACE_S = 0.005
INSTANCES = 2
CAPACITY = INSTANCES / PACE_S  # samples/s: every batch of 1 takes at least PACE_S
PROBE_MS = 2000
FULL_RUNS = 3  # 10 would take over a minute here: benchmarks/tune_repeat.py does 10
# Below the default 0.9: this 2-core machine's load (other jobs) changes between the probes and the
# full runs more than a GPU's does, and pacing bounds a batch's time from below only. At 0.8 a full
# run under CI's load once missed the 130 ms bound by 2.5 ms (2026-12-05): a 2 s probe a little past
# the capacity can still be VALID (its queue has not grown 130 ms yet), so the margin covers that too.
MARGIN = 0.7
BERT: dict[str, Any] = {
    "benchmark": "bert",
    "backend": "null",
    "category": "datacenter",
    "dataset": {"synthetic": {"samples": 12, "seed": 5}},
    "model": {"synthetic": {"seed": 5}},
    "audits": [],
    "batchSize": 1,
    "instancesPerDevice": INSTANCES,
    "testModes": ["PerformanceOnly"],
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("tune-work")
    ws = Workspace(make_spec(**BERT), workdir, "prepare", quiet=True)
    for step in (steps.download_data, steps.preprocess):
        assert step(ws).ok
    return workdir


def _ws(root: Path, run: str, **over: Any) -> Workspace:
    ws = Workspace(make_spec(**{**BERT, **over}), root, run, quiet=True)
    ws.perf_backend_wrapper = lambda b: Paced(b, PACE_S)
    return ws


def _server(root: Path, run: str, **over: Any) -> Workspace:
    # A full run of 3 s at ~300 QPS has the ~460 queries LoadGen's early stopping wants for a p99.
    return _ws(root, run, scenarios=["Server"], loadgen={"minDurationMs": 3000, "minQueryCount": 1}, **over)


@pytest.fixture(scope="module")
def found(root: Path) -> tuple[Tuning, list[str]]:
    said: list[str] = []
    return tune.tune(_server(root, "tune-server"), "Server", margin=MARGIN, probe_ms=PROBE_MS, say=said.append), said


def test_server_target_is_under_the_capacity_and_over_half_of_it(found: tuple[Tuning, list[str]]) -> None:
    tuning, said = found
    assert tuning.measured > CAPACITY / 2 and tuning.value < CAPACITY
    assert tuning.value == pytest.approx(MARGIN * tuning.measured, rel=1e-3)
    assert tuning.parameter == "targetQps" and not tuning.reused
    # The bracket: Offline probes first, then Server probes no higher than the Offline throughput.
    offline = [p for p in tuning.probes if p.scenario == "Offline"]
    server = [p for p in tuning.probes if p.scenario == "Server"]
    assert offline[-1].valid and server and max(p.target for p in server) <= (offline[-1].samplesPerSecond or 0)
    assert max(p.target for p in server if p.valid) == tuning.measured
    assert sum(line.count(": probe ") for line in said) == len(tuning.probes)  # one line per probe


def test_full_runs_at_the_tuned_target_are_valid(root: Path, found: tuple[Tuning, list[str]]) -> None:
    """Each run goes through run-harness with tune: true and reuses the finding without probing;
    all but one of them VALID. One may miss: on this shared 2-core machine under CI's load (a core
    kept busy) one stall of the 130 ms bound delays ~30 queries at this rate, enough for a p99 over
    ~460, whatever the margin (CI, 2026-12-06: p50 5.8 ms, p90 20.9 ms, p99 141 ms at 224 QPS)."""
    tuning, _ = found
    runs: list[tuple[bool, str]] = []
    for i in range(FULL_RUNS):
        ws = _server(root, f"full-{i}", tune=True)
        [r] = steps.run_harness(ws, "Server", "PerformanceOnly").results
        assert r.tuning is not None and r.tuning.reused and r.tuning.value == tuning.value
        runs.append((r.valid, f"run {i} at {tuning.value} QPS: {r.resultValidity} {r.invalidReason} p99 {r.latencyNs}"))
        assert not ws.tuning_dir("Server").exists()  # no probe ran
        conf = (ws.harness_dir("Server", "PerformanceOnly") / "user.conf").read_text()
        assert f"bert.Server.target_qps = {tuning.value:g}" in conf
    assert sum(valid for valid, _ in runs) >= FULL_RUNS - 1, [text for _, text in runs]


def test_the_cache_is_reused_and_a_batch_size_change_invalidates_it(
    root: Path, found: tuple[Tuning, list[str]]
) -> None:
    tuning, _ = found
    said: list[str] = []
    again = tune.tune(_server(root, "tune-again"), "Server", say=said.append)
    assert again.reused and again.value == tuning.value and again.probes == tuning.probes
    assert len(said) == 1 and "reused from the cache without probing" in said[0]
    assert tune.cached(_server(root, "other-batch", batchSize=2), "Server") is None
    assert tune.cached(_server(root, "other-instances", instancesPerDevice=1), "Server") is None
    assert tune.cached(_server(root, "same-key", tune=True), "Server") is not None  # tune itself is no key


def test_a_spec_with_tune_records_the_tuning_in_the_outcome_and_user_conf(root: Path, _termination_log: Path) -> None:
    ws = _ws(root, "offline", scenarios=["Offline"], tune=True, loadgen={"minDurationMs": 1500, "minQueryCount": 1})
    outcome = steps.run_harness(ws, "Offline", "PerformanceOnly", retune=True)
    [r] = outcome.results
    assert r.tuning is not None and r.tuning.parameter == "expectedQps" and not r.tuning.reused
    assert 0 < r.tuning.measured < CAPACITY and r.tuning.probes[-1].valid and r.valid
    assert r.tuning.value == pytest.approx(r.tuning.measured / tune.DEFAULT_MARGIN, rel=1e-3)  # headroom upwards
    assert "tuned expectedQps" in outcome.message
    conf = (ws.harness_dir("Offline", "PerformanceOnly") / "user.conf").read_text()
    assert f"bert.Offline.target_qps = {r.tuning.value:g}" in conf
    assert "# tuned expectedQps" in conf and conf.count("# probe: Offline target") == len(r.tuning.probes)
    recorded = json.loads(_termination_log.read_text())["results"][0]["tuning"]
    assert recorded["value"] == r.tuning.value and len(recorded["probes"]) == len(r.tuning.probes)
    assert (ws.tuning_dir("Offline") / "probe-01-Offline" / "mlperf_log_summary.txt").is_file()


def test_single_stream_tunes_its_expected_latency(root: Path) -> None:
    ws = _ws(root, "ss", category="edge", scenarios=["SingleStream"], loadgen={"minDurationMs": 1000})
    tuning = tune.tune(ws, "SingleStream", say=lambda _: None)
    assert tuning.parameter == "targetLatencyMs" and tuning.value >= PACE_S * 1000 and len(tuning.probes) == 1
    assert tune.tuned_config(ws.spec, "SingleStream", tuning).loadgen.singleStreamExpectedLatencyNs == int(
        tuning.value * 1e6
    )


def _counted(ws: Workspace) -> tuple[list[Backend], list[Backend]]:
    """The paced backends ``ws``'s performance runs make, and those closed."""
    made: list[Backend] = []
    closed: list[Backend] = []

    class Counted(Paced):
        def close(self) -> None:
            closed.append(self)
            super().close()

    def wrap(b: Backend) -> Backend:
        made.append(Counted(b, PACE_S))
        return made[-1]

    ws.perf_backend_wrapper = wrap
    return made, closed


def test_the_probes_and_the_tuned_run_load_their_instances_once(root: Path, _termination_log: Path) -> None:
    """Every probe of a tuning (the Offline bracket at the Server's batch and instances, then the
    Server's) runs on the same instances, loaded once and closed at its end, and a tuned run goes on
    its probes' instances: a GPU model's load and captures are paid once, not per probe and run."""
    ws = _server(root, "tune-pool")
    made, closed = _counted(ws)
    found = tune.tune(ws, "Server", retune=True, probe_ms=1000, max_probes=2, say=lambda _: None)
    assert {p.scenario for p in found.probes} == {"Offline", "Server"} and len(found.probes) >= 3
    assert len(made) == INSTANCES and sorted(map(id, closed)) == sorted(map(id, made))

    ws = _ws(root, "tuned-run", scenarios=["Offline"], tune=True, loadgen={"minDurationMs": 1000, "minQueryCount": 1})
    made, closed = _counted(ws)
    [r] = steps.run_harness(ws, "Offline", "PerformanceOnly", retune=True).results
    assert r.tuning is not None and len(r.tuning.probes) >= 1 and r.valid
    assert len(made) == INSTANCES and sorted(map(id, closed)) == sorted(map(id, made))


def test_the_most_probes_fit_the_termination_message() -> None:
    probe = TuningProbe(scenario="Server", target=123456.789, valid=True, samplesPerSecond=123456.789, latencyMs=9.999)
    probes = [probe] * (tune.OFFLINE_ROUNDS + tune.MAX_PROBES)
    found = Tuning(parameter="targetQps", value=1e5, measured=1e5, margin=0.9, key="x" * 40, probes=probes)
    result = ScenarioResult(scenario="Server", testMode="PerformanceOnly", logDir="runs/" + "r" * 60, tuning=found)
    assert StepOutcome(step="run-harness", ok=True, message="m" * 500, results=[result]).to_message()
