"""The typed config and what it becomes for LoadGen, in both rounds."""

from __future__ import annotations

from pathlib import Path

import mlperf_loadgen as lg
import pytest
from harness_support import make_spec
from mlperf_harness.config import build_config, resolve_block, table_values
from mlperf_harness.loadgen import settings
from mlperf_harness.suites import load_suite


def test_extends_and_scales() -> None:
    blocks = {"one": {"expectedQps": 100, "workers": 2}, "eight": {"extends": "one", "scales": {"expectedQps": 8}}}
    assert resolve_block(blocks, "eight") == {"expectedQps": 800, "workers": 2}
    assert table_values("resnet50", "Offline", "NVIDIA-H200x8", "default")["expectedQps"] == 8 * 43000


def test_instances_per_gpu_and_devices() -> None:
    """An 8-GPU node: every GPU gets the table's instances (or the spec's), samples on the device."""
    node = {
        "system": {"gpuProduct": "NVIDIA-H200", "gpuCount": 8},
        "backend": "pytorch",
        "loadgen": {},
        "batchSize": None,
    }
    cfg = build_config(make_spec(**node), "Offline")
    assert (cfg.devices, cfg.workers, cfg.startFromDevice, cfg.batchSize) == (8, 2, True, 1024)
    assert build_config(make_spec(**{**node, "category": "datacenter"}), "Server").batchSize == 128
    assert build_config(make_spec(**node, instancesPerDevice=3), "Offline").workers == 3
    cpu = build_config(make_spec(loadgen={}, batchSize=None), "Offline")
    assert (cpu.devices, cpu.workers, cpu.startFromDevice, cpu.torchCompile, cpu.batchSize) == (1, 1, False, "off", 8)


def test_v10_settings_come_from_the_suite_table(tmp_path: Path) -> None:
    cfg = build_config(make_spec(category="datacenter", scenarios=["Server"], loadgen={}), "Server")
    assert cfg.loadgen.minDurationMs == 600_000 and cfg.loadgen.minQueryCount == 270_336
    assert cfg.loadgen.serverLatencyNs == 15_000_000
    ts = settings.test_settings(cfg, "PerformanceOnly", tmp_path / "user.conf", dataset_size=50_000)
    assert ts.qsl_rng_seed == 7322528924094909334 and ts.schedule_rng_seed == 3507442325620259414
    assert ts.server_target_latency_ns == 15_000_000 and ts.scenario == lg.TestScenario.Server
    assert ts.performance_sample_count_override == 1024
    conf = settings.round_mlperf_conf(load_suite("v1.0"), "resnet50")
    assert "resnet50.Server.target_latency = 15" in conf and "*.Offline.min_query_count = 24576" in conf


def test_fast_and_overrides() -> None:
    cfg = build_config(make_spec(fast=True, dataset={"synthetic": {}}, loadgen={}), "Offline")
    assert cfg.loadgen.minDurationMs == 60_000 and cfg.loadgen.minQueryCount == 1
    assert "fast" in cfg.notSubmittable and not cfg.submittable
    ss = build_config(make_spec(fast=True, scenarios=["SingleStream"], loadgen={}), "SingleStream")
    assert ss.loadgen.minQueryCount == 1024  # fast lowers the count for Offline and MultiStream only
    over = build_config(make_spec(loadgen={"expectedQps": 123, "minDurationMs": 5}), "Offline")
    assert over.loadgen.offlineExpectedQps == 123 and over.loadgen.minDurationMs == 5


def test_v61_user_conf_carries_only_what_user_conf_may_set() -> None:
    cfg = build_config(make_spec(suite="v6.1", category="edge", loadgen={"expectedQps": 50}), "Offline")
    text = settings.user_conf(cfg)
    assert "resnet50.Offline.target_qps = 50" in text
    assert "seed" not in text and "target_latency_percentile" not in text
    assert cfg.loadgen.compiledIn


def test_audit_configs() -> None:
    cfg = build_config(make_spec(loadgen={}), "Offline")
    t01 = settings.audit_config("TEST01", cfg)
    assert "*.*.accuracy_log_rng_seed = 720381539243781796" in t01 and "sampling_target = 4096" in t01
    assert "performance_issue_unique = 1" in settings.audit_config("TEST04-A", cfg)
    assert "performance_issue_same_index = 3" in settings.audit_config("TEST04-B", cfg)
    assert "313588358309856706" in settings.audit_config("TEST05", cfg)


def test_engine_key_follows_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled pytorch engine holds the compile's artifacts: another compile mode, another engine."""
    from mlperf_harness import artifacts, config

    spec = make_spec(backend="pytorch", system={"gpuProduct": "NVIDIA-H200", "gpuCount": 1})
    plain = artifacts.engine(spec, "Offline", "pytorch-2.11.0").key
    real = config.table_values
    monkeypatch.setattr(config, "table_values", lambda *a: {**real(*a), "torchCompile": "max-autotune"})
    assert artifacts.engine(spec, "Offline", "pytorch-2.11.0").key != plain
    assert build_config(spec, "Offline").torchCompile == "max-autotune"
