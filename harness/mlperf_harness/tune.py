"""Target finding: the LoadGen targets a run needs, found with short probe runs on this system.

* Server: the highest ``targetQps`` that stays VALID under the round's latency bound. The search
  is bracketed by an Offline probe at the Server's batch size and instances (a Server cannot
  complete more than Offline throughput), then bisects on VALID / INVALID to a relative
  resolution. An overloaded probe (it completed clearly less than its target) is clearly INVALID:
  its completed rate becomes the new upper end at once, so the search never probes far above the
  capacity. The run uses ``margin`` x the highest VALID probe.
* Offline: the measured throughput / ``margin`` as ``expectedQps``, from probes that grow until one
  lasts the probe duration. LoadGen sizes its one query from it (with its own 10 % slack); a run
  faster than that ends before its min duration and is INVALID, so the margin raises the value.
* SingleStream / MultiStream: the measured percentile latency as ``targetLatencyMs``.

Probes are real LoadGen PerformanceOnly runs of ``probe_ms`` (default: the run's min duration,
at most 10 s), logged under ``runs/<run>/<scenario>/tuning/``: they are never the run's results.
They share their model instances (``loadgen.pool``: loaded and warmed once, not per probe),
and a tuned run goes on them too (``steps.run_harness``).
A finding is cached under ``cache/tuning/<key>/`` (key: ``artifacts.tuning``); the next tune of
the same key reuses it without probing, unless ``retune``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from typing import cast

from . import steps
from .config import HarnessConfig, build_config
from .errors import HarnessError
from .fsutil import atomic_write_text, read_marker, write_marker
from .loadgen.logs import Summary
from .loadgen.pool import InstancePool, shared
from .results import Tuning, TuningProbe
from .spec import LoadGenOverrides, MLPerfRunSpec
from .suites import Scenario
from .workspace import Workspace

DEFAULT_MARGIN = 0.9  # of the highest VALID Server probe: a full run varies more than a short probe shows
DEFAULT_RESOLUTION = 0.05  # bisection stops when the VALID / INVALID bracket is within 5 % of its top
MAX_PROBE_MS = 10_000
MAX_PROBES = 12  # Server probes after the Offline bracket
OFFLINE_ROUNDS = 5  # Offline probes grow from one batch per instance until one lasts the probe duration
OVERLOADED = 0.95  # a Server probe that completed below this share of its target was overloaded
STREAM_GUESS = 10  # a stream probe expects this many times less latency than configured (see _stream)
STREAM_ROUNDS = 3
RAN_OUT = "Ran out of generated queries"
CACHE_FILE = "tuning.json"

PARAMETER = {
    "Offline": "expectedQps",
    "Server": "targetQps",
    "SingleStream": "targetLatencyMs",
    "MultiStream": "targetLatencyMs",
}
Say = Callable[[str], None]


def cached(ws: Workspace, scenario: str) -> Tuning | None:
    """The cached finding for this workspace's key, marked reused; None when there is none."""
    directory = ws.workdir.artifact(ws.tuning(scenario))
    if read_marker(directory) is None:
        return None
    found = Tuning.model_validate_json((directory / CACHE_FILE).read_text())
    return found.model_copy(update={"reused": True})


def tune(
    ws: Workspace,
    scenario: str,
    *,
    retune: bool = False,
    margin: float = DEFAULT_MARGIN,
    resolution: float = DEFAULT_RESOLUTION,
    probe_ms: int | None = None,
    max_probes: int = MAX_PROBES,
    say: Say = print,
    pool: InstancePool | None = None,
) -> Tuning:
    """Find (or reuse) the scenario's LoadGen target on this system; see the module's docstring.

    ``margin`` scales the highest VALID Server target (0 < margin <= 1); ``resolution`` is the relative
    width at which the Server bisection stops; ``probe_ms`` the probes' min duration. A cached finding
    is reused as it was made (its own margin): ``retune`` to change it. The probes share their model
    instances: ``pool``'s, left open for the caller's run, or a pool of their own, closed at the end."""
    if scenario not in PARAMETER:
        raise HarnessError(f"tune: unknown scenario {scenario!r} (use {', '.join(PARAMETER)})")
    if not 0 < margin <= 1:
        raise HarnessError(f"tune: margin {margin} must be in (0, 1]")
    artifact = ws.tuning(scenario)
    if not retune and (hit := cached(ws, scenario)) is not None:
        say(f"tune {scenario}: {hit.describe()}: cache/tuning/{artifact.key} (--retune probes again)")
        return hit
    base = build_config(ws.spec, cast(Scenario, scenario))
    shutil.rmtree(ws.tuning_dir(scenario), ignore_errors=True)  # no earlier tuning's probes beside these
    probe_ms = probe_ms or min(MAX_PROBE_MS, base.loadgen.minDurationMs)
    with shared(pool) as instances:
        prober = _Prober(ws, scenario, probe_ms, say, instances)
        if scenario == "Server":
            measured = _server(prober, base, resolution, max_probes)
            found = Tuning(parameter="targetQps", value=round(measured * margin, 3), measured=measured, margin=margin)
        elif scenario == "Offline":
            measured = _offline(prober, ws.spec, base)
            # A run faster than its expected QPS ends before its min duration (INVALID): the margin goes up.
            found = Tuning(parameter="expectedQps", value=round(measured / margin, 3), measured=measured, margin=margin)
        else:
            measured = _stream(prober, base)
            found = Tuning(parameter="targetLatencyMs", value=measured, measured=measured)
    found = found.model_copy(update={"key": artifact.key, "probes": prober.probes})
    directory = ws.workdir.artifact(artifact)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / CACHE_FILE, found.model_dump_json(indent=2))
    write_marker(directory, "tune", [directory / CACHE_FILE], inputs=artifact.inputs)
    atomic_write_text(ws.tuning_dir(scenario) / CACHE_FILE, found.model_dump_json(indent=2))
    say(f"tune {scenario}: {found.describe()}")
    return found


def overrides(found: Tuning) -> LoadGenOverrides:
    """The finding as the loadgen setting it replaces."""
    return LoadGenOverrides.model_validate({found.parameter: found.value})


def notes(found: Tuning) -> tuple[str, ...]:
    """user.conf comment lines: the value, how it was found, and every probe."""
    lines = [f"{found.describe()}; cache key {found.key}"]
    lines += [f"probe: {_probe_line(p)}" for p in found.probes]
    return tuple(lines)


def tuned_config(spec: MLPerfRunSpec, scenario: str, found: Tuning | None) -> HarnessConfig:
    """The run's config with the finding in place of the spec's and the table's value."""
    if found is None:
        return build_config(spec, cast(Scenario, scenario))
    return build_config(spec, cast(Scenario, scenario), overrides(found), notes(found))


def _probe_line(p: TuningProbe) -> str:
    unit = "ms" if p.scenario in ("SingleStream", "MultiStream") else "QPS"
    latency = f"{p.latencyMs:.2f} ms" if p.latencyMs is not None else "-"
    return (
        f"{p.scenario} target {p.target:g} {unit}: {'VALID' if p.valid else 'INVALID'}, "
        f"percentile latency {latency}, {p.samplesPerSecond or 0:.1f} samples/s"
    )


class _RanOut(HarnessError):
    pass


class _Prober:
    """Runs probes with the scenario's engine, its instances loaded once for all of them (``pool``);
    each probe in its own log dir, each said in one line."""

    def __init__(self, ws: Workspace, scenario: str, probe_ms: int, say: Say, pool: InstancePool | None) -> None:
        self.ws, self.scenario, self.probe_ms, self.say, self.pool = ws, scenario, probe_ms, say, pool
        self.probes: list[TuningProbe] = []

    def run(self, spec: MLPerfRunSpec, scenario: str, target: LoadGenOverrides) -> tuple[TuningProbe, Summary]:
        """The probe and its summary; _RanOut when LoadGen ran out of queries (a stream's expected
        latency was too long)."""
        short = target.model_copy(update={"minDurationMs": self.probe_ms, "minQueryCount": 1})
        cfg = build_config(spec, cast(Scenario, scenario), short)
        log_dir = self.ws.tuning_dir(self.scenario) / f"probe-{len(self.probes) + 1:02d}-{scenario}"
        summary, errors, _, _ = steps._execute(
            self.ws, cfg, "PerformanceOnly", log_dir, engine_scenario=self.scenario, pool=self.pool
        )
        if any(RAN_OUT in e for e in errors):
            raise _RanOut(f"{log_dir}: LoadGen ran out of queries at {_target(target):g}")
        if errors or summary is None:
            raise HarnessError(f"{log_dir}: tuning probe failed: {errors[0] if errors else 'no summary'}")
        ns = None if scenario == "Offline" else summary.target_latency_ns or summary.latency.get("p99")
        probe = TuningProbe(
            scenario=scenario,
            target=round(_target(target), 3),
            valid=_met(cfg, summary),
            samplesPerSecond=summary.throughput(),
            latencyMs=round(ns / 1e6, 3) if ns else None,
        )
        self.probes.append(probe)
        self.say(f"tune {self.scenario}: probe {len(self.probes)}: {_probe_line(probe)}")
        return probe, summary


def _target(over: LoadGenOverrides) -> float:
    return over.expectedQps or over.targetQps or over.targetLatencyMs or 0.0


def _met(cfg: HarnessConfig, summary: Summary) -> bool:
    """A probe's verdict: LoadGen's, except early stopping, which a probe is too short to meet at a
    low target (LoadGen wants about 460 queries for a p99 with none over the bound); its latency
    constraint is judged on every query it ran."""
    if summary.early_stopping_met is False and summary.values.get("Performance constraints satisfied") == "Yes":
        return summary.min_duration_met is not False and summary.min_queries_met is not False
    return summary.valid and not steps._over_bound(cfg, summary)


def _offline(prober: _Prober, spec: MLPerfRunSpec, base: HarnessConfig) -> float:
    """Offline throughput: a first probe of one batch per instance, then probes sized by the last
    measured rate until one lasts the probe duration (LoadGen: VALID)."""
    qps = base.batchSize * base.workers * base.devices * 1000 / prober.probe_ms
    for _ in range(OFFLINE_ROUNDS):
        probe, _ = prober.run(spec, "Offline", LoadGenOverrides(expectedQps=qps))
        rate = probe.samplesPerSecond or 0.0
        if probe.valid and rate > 0:
            return round(rate, 3)
        qps = max(rate, qps * 2)  # it ended before the probe duration: at least double what it was given
    raise HarnessError(
        f"tune: {OFFLINE_ROUNDS} Offline probes never lasted {prober.probe_ms} ms (last at {qps:g} QPS); "
        "see their logs under the run's tuning/ dir"
    )


def _server(prober: _Prober, base: HarnessConfig, resolution: float, max_probes: int) -> float:
    """The highest VALID Server target, bracketed by the Offline throughput at the Server's batch
    size and instances, by bisection with the overload cut (see the module's docstring)."""
    at_server = prober.ws.spec.model_copy(update={"batchSize": base.batchSize, "instancesPerDevice": base.workers})
    hi = _offline(prober, at_server, base)
    lo = 0.0
    target = hi * 0.75  # the Server capacity is below Offline's: start under it
    for _ in range(max_probes):
        probe, summary = prober.run(prober.ws.spec, "Server", LoadGenOverrides(targetQps=target))
        if probe.valid:
            lo = target
        else:
            done = summary.throughput() or target
            hi = min(target, done) if lo < done < OVERLOADED * target else target
        if lo > 0 and hi - lo <= resolution * hi:
            return round(lo, 3)
        target = (lo + hi) / 2
    if lo > 0:
        return round(lo, 3)
    bound = (base.loadgen.serverLatencyNs or 0) / 1e6
    raise HarnessError(
        f"tune: no Server target down to {target:.3g} QPS was VALID in {max_probes} probes (latency bound "
        f"{bound:g} ms): is one batch of {base.batchSize} slower than the bound? Lower batchSize"
    )


def _stream(prober: _Prober, base: HarnessConfig) -> float:
    """The percentile latency of a probe, in ms. LoadGen plans a stream's queries from its expected
    latency and fails a run that runs out of them, so the probe expects a tenth of the configured
    latency (it ends at its min duration anyway), and a tenth of that again if LoadGen still ran out."""
    ns = base.loadgen.singleStreamExpectedLatencyNs or base.loadgen.multiStreamExpectedLatencyNs or 10_000_000
    expected = ns / 1e6 / STREAM_GUESS
    for _ in range(STREAM_ROUNDS):
        try:
            probe, _ = prober.run(prober.ws.spec, prober.scenario, LoadGenOverrides(targetLatencyMs=expected))
        except _RanOut as exc:
            prober.say(f"tune {prober.scenario}: {exc.message}; a shorter expected latency next")
            expected /= STREAM_GUESS
            continue
        if probe.latencyMs is None or not math.isfinite(probe.latencyMs):
            raise HarnessError(f"tune: the {prober.scenario} probe reported no percentile latency")
        return probe.latencyMs
    raise HarnessError(f"tune: {prober.scenario} probes ran out of queries down to {expected:g} ms expected")
