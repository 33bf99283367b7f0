"""From the typed config to LoadGen: user.conf text, a round's mlperf.conf, TestSettings, audit.config.

Two ways, chosen by the suite:

* compiled-in round (the current one): LoadGen carries the round's mlperf.conf. The harness
  writes user.conf with only what it may set (targets; fast/test overrides) and calls
  ``TestSettings.FromConfig(user.conf, model, scenario)`` once per process, as the rules require
  (a second call logs "Multiple conf files are used", an error for a submission).
* any other round (v1.0): LoadGen's compiled conf is the wrong round, and user.conf cannot set
  seeds or latency bounds, so every value is set on TestSettings directly from the suite table.
  The same values are also written as that round's mlperf.conf and user.conf for the submission
  tree, so the files describe exactly what ran.
"""

from __future__ import annotations

from pathlib import Path

import mlperf_loadgen as lg

from ..config import HarnessConfig
from ..suites import Suite, load_suite

_SCENARIO = {
    "SingleStream": lg.TestScenario.SingleStream,
    "MultiStream": lg.TestScenario.MultiStream,
    "Server": lg.TestScenario.Server,
    "Offline": lg.TestScenario.Offline,
}
_MODE = {"PerformanceOnly": lg.TestMode.PerformanceOnly, "AccuracyOnly": lg.TestMode.AccuracyOnly}
_from_config_calls = 0


def _ms(ns: int | None) -> str:
    return f"{(ns or 0) / 1e6:g}"


def user_conf(cfg: HarnessConfig) -> str:
    """user.conf lines for this config (``model.scenario.key = value``)."""
    c, p = cfg.loadgen, f"{cfg.loadgen.model}.{cfg.scenario}"
    lines = [f"# user.conf for {cfg.benchmark} {cfg.scenario} on {cfg.systemId} ({cfg.suite})"]
    if cfg.synthetic:
        lines.append("# SYNTHETIC data or model: not a submittable result")
    lines += [f"# {note}" for note in cfg.userConfNotes]
    keys = (
        set(c.userConfKeys)
        if c.compiledIn
        else {
            "target_qps",
            "target_latency",
            "min_duration",
            "min_query_count",
            "performance_sample_count_override",
            "samples_per_query",
        }
    )
    if "target_qps" in keys and c.offlineExpectedQps is not None:
        lines.append(f"{p}.target_qps = {c.offlineExpectedQps:g}")
    if "target_qps" in keys and c.serverTargetQps is not None:
        lines.append(f"{p}.target_qps = {c.serverTargetQps:g}")
    if "target_latency" in keys and c.singleStreamExpectedLatencyNs is not None:
        lines.append(f"{p}.target_latency = {_ms(c.singleStreamExpectedLatencyNs)}")
    if "target_latency" in keys and c.multiStreamExpectedLatencyNs is not None:
        lines.append(f"{p}.target_latency = {_ms(c.multiStreamExpectedLatencyNs)}")
    if "samples_per_query" in keys and c.multiStreamSamplesPerQuery is not None and cfg.scenario == "MultiStream":
        lines.append(f"{p}.samples_per_query = {c.multiStreamSamplesPerQuery}")
    if "min_duration" in keys:
        lines.append(f"{p}.min_duration = {c.minDurationMs}")
    if "min_query_count" in keys:
        lines.append(f"{p}.min_query_count = {c.minQueryCount}")
    if "performance_sample_count_override" in keys:
        lines.append(f"{c.model}.*.performance_sample_count_override = {c.performanceSampleCount}")
    return "\n".join(lines) + "\n"


def round_mlperf_conf(suite: Suite, benchmark: str) -> str:
    """The round's mlperf.conf lines for one benchmark, from the suite table."""
    lgs, b = suite.loadgen, suite.rule(benchmark).loadgen
    out = [
        f"# {suite.description}: mlperf.conf values for {benchmark}, from the project's suite table",
        f"{benchmark}.*.performance_sample_count_override = {b.performanceSampleCount}",
        f"*.*.qsl_rng_seed = {lgs.seeds.qsl}",
        f"*.*.sample_index_rng_seed = {lgs.seeds.sampleIndex}",
        f"*.*.schedule_rng_seed = {lgs.seeds.schedule}",
    ]
    for name, sc in lgs.scenarios.items():
        out += [
            f"*.{name}.target_latency_percentile = {sc.latencyPercentile * 100:g}",
            f"*.{name}.min_duration = {sc.minDurationMs}",
            f"*.{name}.min_query_count = {sc.minQueryCount}",
        ]
    if b.serverLatencyMs:
        out.append(f"{benchmark}.Server.target_latency = {b.serverLatencyMs:g}")
    if b.multiStreamLatencyMs:
        out.append(f"{benchmark}.MultiStream.target_latency = {b.multiStreamLatencyMs:g}")
    if b.multiStreamTargetQps:
        out.append(f"{benchmark}.MultiStream.target_qps = {b.multiStreamTargetQps:g}")
    return "\n".join(out) + "\n"


def test_settings(
    cfg: HarnessConfig, mode: str, user_conf_path: Path, dataset_size: int, audit: str | None = None
) -> lg.TestSettings:
    """TestSettings for one run. ``dataset_size`` caps the performance sample count (a small
    synthetic set); such a run is never submittable anyway.

    TEST05's seeds are set here too: LoadGen 6 ignores seeds in an audit.config (it accepts them
    from its compiled-in conf only), so the audit.config carries them for the record while the
    run gets them from TestSettings."""
    global _from_config_calls
    c = cfg.loadgen
    ts = lg.TestSettings()
    if c.compiledIn:
        _from_config_calls += 1
        rc = ts.FromConfig(str(user_conf_path), c.model, cfg.scenario)
        if rc != 0:
            raise RuntimeError(f"{user_conf_path}: LoadGen rejected it (FromConfig returned {rc})")
        if ts.performance_sample_count_override > dataset_size:
            ts.performance_sample_count_override = dataset_size
    else:
        ts.qsl_rng_seed = c.seeds.qsl
        ts.sample_index_rng_seed = c.seeds.sampleIndex
        ts.schedule_rng_seed = c.seeds.schedule
        ts.min_duration_ms = c.minDurationMs
        ts.min_query_count = c.minQueryCount
        ts.performance_sample_count_override = min(c.performanceSampleCount, dataset_size)
        if cfg.scenario == "Offline":
            ts.offline_expected_qps = c.offlineExpectedQps or 1.0
        elif cfg.scenario == "Server":
            ts.server_target_qps = c.serverTargetQps or 1.0
            ts.server_target_latency_ns = c.serverLatencyNs or 10_000_000
            ts.server_target_latency_percentile = c.latencyPercentile
        elif cfg.scenario == "SingleStream":
            ts.single_stream_expected_latency_ns = c.singleStreamExpectedLatencyNs or 10_000_000
            ts.single_stream_target_latency_percentile = c.latencyPercentile
        else:
            ts.multi_stream_expected_latency_ns = c.multiStreamExpectedLatencyNs or 80_000_000
            ts.multi_stream_samples_per_query = c.multiStreamSamplesPerQuery or 8
            ts.multi_stream_target_latency_percentile = c.latencyPercentile
    if audit == "TEST05":
        seeds = load_suite(cfg.suite).loadgen.test05Seeds
        if seeds is None:
            raise ValueError(f"TEST05 is not part of suite {cfg.suite}")
        ts.qsl_rng_seed, ts.sample_index_rng_seed, ts.schedule_rng_seed = seeds.qsl, seeds.sampleIndex, seeds.schedule
    # FromConfig reads the conf's keys only; scenario and mode are always ours to set.
    ts.scenario = _SCENARIO[cfg.scenario]
    ts.mode = _MODE[mode]
    return ts


def from_config_calls() -> int:
    """How often this process called FromConfig: more than once makes LoadGen log an error."""
    return _from_config_calls


def audit_config(test: str, cfg: HarnessConfig) -> str:
    """The audit.config of a compliance test (``*.*`` keys: LoadGen applies them to any model)."""
    suite = load_suite(cfg.suite)
    lines = [f"# {test} audit.config ({suite.description})", "*.*.mode = 2"]
    if test == "TEST01":
        target = suite.rule(cfg.benchmark).loadgen.test01SamplingTarget
        lines += [
            f"*.*.accuracy_log_rng_seed = {suite.loadgen.test01Seed}",
            f"*.*.accuracy_log_sampling_target = {target}",
        ]
    elif test == "TEST04-A":
        lines += ["*.*.performance_issue_unique = 1"]
    elif test in ("TEST04-B", "TEST04"):
        lines += [
            "*.*.performance_issue_unique = 0",
            "*.*.performance_issue_same = 1",
            "*.*.performance_issue_same_index = 3",
        ]
    elif test == "TEST05":
        seeds = suite.loadgen.test05Seeds
        if seeds is None:
            raise ValueError(f"TEST05 is not part of suite {suite.name}")
        # The official file's lines; LoadGen 6 ignores them, test_settings() applies the seeds.
        lines += [
            f"*.*.qsl_rng_seed = {seeds.qsl}",
            f"*.*.sample_index_rng_seed = {seeds.sampleIndex}",
            f"*.*.schedule_rng_seed = {seeds.schedule}",
        ]
    else:
        raise ValueError(f"unknown compliance test {test!r}")
    return "\n".join(lines) + "\n"
