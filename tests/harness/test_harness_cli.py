"""The CLI as Jobs run it: one process per verb, outcome in the termination log."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from harness_support import PYTHONPATH, make_spec
from mlperf_harness.results import read_termination_message


def _mlperf(*args: str, env_log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlperf_harness.cli", *args],
        capture_output=True,
        text=True,
        env={"MLPERF_TERMINATION_LOG": str(env_log), "PATH": "/usr/bin", **PYTHONPATH},
        timeout=300,
    )


def test_current_round_run_uses_user_conf_and_fromconfig_once(workdir: Path, tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(workdir / "cache", root / "cache")
    loadgen = {"minDurationMs": 300, "minQueryCount": 8, "expectedQps": 20}
    spec = make_spec(suite="v6.1", category="edge", loadgen=loadgen)
    log = tmp_path / "termination-log"
    verb = ("run-harness", "--spec", spec.model_dump_json(), "--workdir", str(root), "--run", "cur", "-q")
    proc = _mlperf(*verb, "--scenario", "Offline", "--test-mode", "PerformanceOnly", env_log=log)
    assert proc.returncode == 0, proc.stderr
    outcome = read_termination_message(log.read_text())
    assert outcome.ok and outcome.results[0].scenario == "Offline" and outcome.results[0].synthetic
    assert len(log.read_bytes()) <= 4096
    run = root / "runs" / "cur" / "Offline" / "PerformanceOnly"
    conf = (run / "user.conf").read_text()
    assert "resnet50.Offline.target_qps = 20" in conf and "resnet50.Offline.min_duration = 300" in conf
    detail = (run / "mlperf_log_detail.txt").read_text()
    assert "Multiple conf files" not in detail
    assert '"key": "effective_qsl_rng_seed", "value": 2085463073848966840' in detail  # LoadGen's own round
    assert not (run / "mlperf.conf").exists()  # the round's conf is LoadGen's compiled-in one
    again = _mlperf(*verb, "--scenario", "Offline", env_log=log)
    assert again.returncode == 0 and "already complete" in again.stdout
    assert read_termination_message(log.read_text()).cacheHit


def test_unknown_scenario_and_bad_spec_exit_2(tmp_path: Path) -> None:
    log = tmp_path / "tl"
    proc = _mlperf("download-data", "--spec", '{"benchmark": "resnet50"}', "--workdir", str(tmp_path), env_log=log)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "storage" in errors[0]
    help_text = _mlperf("audit", "--help", env_log=log).stdout
    assert "--test" in help_text and "--scenario" in help_text and "MLPERF_SPEC" in help_text
