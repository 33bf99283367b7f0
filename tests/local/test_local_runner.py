"""`mlperf run` (the local runner) and `mlperf submission`, on real LoadGen and onnxruntime."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlperf_harness.submission import check_v10

MLPERF = str(Path(sys.executable).parent / "mlperf")
# Tiny and quick, and the same run in both forms.
FLAGS = [
    "--benchmarks=resnet50",
    "--scenarios=Offline",
    "--fast",
    "--min_duration=1000",
    "--offline_expected_qps=100",
    "--samples=32",
]
MANIFEST = {
    "apiVersion": "mlperf-operator.io/v1alpha1",
    "kind": "MLPerfRun",
    "metadata": {"name": "resnet50-offline"},
    "spec": {
        "benchmark": "resnet50",
        "scenarios": ["Offline"],
        "fast": True,
        "loadgen": {"minDurationMs": 1000, "expectedQps": 100},
        "dataset": {"synthetic": {"samples": 32}},
        "storage": {"existingClaim": "mlperf-cache"},
        "system": {"gpuProduct": "NVIDIA-H200", "gpuCount": 1},
    },
}


def mlperf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLPERF, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def outcomes(workdir: Path, run: str = "resnet50-offline") -> dict[str, dict]:
    steps = workdir / "runs" / run / "steps"
    return {p.stem: json.loads(p.read_text()) for p in sorted(steps.glob("*.json"))}


@pytest.fixture(scope="module")
def flag_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("flags")
    proc = mlperf("run", "--workdir", str(work / "w"), *FLAGS, cwd=work)
    # Exit 1 only when an audit's timing check trips on a busy 2-core machine; the steps all ran.
    assert proc.returncode in (0, 1) and "failed (exit" not in proc.stderr, proc.stdout + proc.stderr
    assert "MLPerf results: resnet50-offline" in proc.stdout and "SYNTHETIC" in proc.stdout
    return work / "w"


def test_manifest_and_v10_flags_give_the_same_steps_and_results(flag_run: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    proc = mlperf("run", "-f", str(manifest), "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert proc.returncode in (0, 1) and "failed (exit" not in proc.stderr, proc.stdout + proc.stderr
    a, b = outcomes(flag_run), outcomes(tmp_path / "w")
    assert list(a) == list(b)
    accuracy = [o["results"][0] for o in (a["run-offline-accuracy"], b["run-offline-accuracy"])]
    assert accuracy[0]["accuracy"] == accuracy[1]["accuracy"] == 100.0
    assert a["run-offline-performance"]["results"][0]["valid"] and b["run-offline-performance"]["results"][0]["valid"]


def test_an_interrupted_run_resumes_without_redoing_completed_steps(tmp_path: Path) -> None:
    work = tmp_path / "w"
    proc = subprocess.Popen(
        [MLPERF, "run", "--workdir", str(work), *FLAGS],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    done = work / "runs" / "resnet50-offline" / "steps" / "preprocess.json"
    deadline = time.monotonic() + 300
    while not done.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert done.exists(), "preprocess never finished"
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "resume" in err
    stamps = {p.name: p.stat().st_mtime_ns for p in done.parent.glob("*.json")}
    assert {"download-data.json", "download-model.json", "preprocess.json"} <= set(stamps)

    again = mlperf("run", "--workdir", str(work), *FLAGS, cwd=tmp_path)
    assert again.returncode in (0, 1) and "failed (exit" not in again.stderr, again.stdout + again.stderr
    assert again.stderr.count("done earlier") >= len(stamps)
    for name, stamp in stamps.items():
        assert (done.parent / name).stat().st_mtime_ns == stamp, f"{name} was redone"


def test_submission_of_two_runs_is_accepted_and_damage_is_named(flag_run: Path, tmp_path: Path) -> None:
    server = mlperf(
        "run",
        "--workdir",
        str(flag_run),
        "--benchmarks=resnet50",
        "--scenarios=Server",
        "--fast",
        "--min_duration=1000",
        "--min_query_count=20",  # --fast leaves Server at the round's 270,336 queries
        "--server_target_qps=20",
        "--samples=32",
        cwd=tmp_path,
    )
    assert server.returncode in (0, 1), server.stderr  # a CPU may miss the Server bound: the tree is what counts
    tree = tmp_path / "tree"
    ok = mlperf(
        "submission",
        "--workdir",
        str(flag_run),
        "--runs",
        "resnet50-offline,resnet50-server",
        "--out",
        str(tree),
        cwd=tmp_path,
    )
    assert ok.returncode == 0 or "not VALID" in ok.stderr, ok.stderr
    results = list(tree.glob("closed/*/results/*/resnet50/*"))
    assert {p.name for p in results} == {"Offline", "Server"}

    offline = next(p for p in results if p.name == "Offline")
    (offline / "performance" / "run_1" / "mlperf_log_detail.txt").unlink()
    bad = mlperf("submission", "--check", str(tree), cwd=tmp_path)
    assert bad.returncode == 1
    assert "performance/run_1/mlperf_log_detail.txt: missing required file" in bad.stderr.replace("\n", "")

    # With the runs' full accuracy logs at hand, a wrong hash is caught and named.
    rebuilt = tmp_path / "tree2"
    assert (
        mlperf(
            "submission", "--workdir", str(flag_run), "--runs", "resnet50-offline", "--out", str(rebuilt), cwd=tmp_path
        ).returncode
        == 0
    )
    acc = next(rebuilt.glob("closed/*/results/*/resnet50/Offline/accuracy/accuracy.txt"))
    acc.write_text(
        "\n".join(line if not line.startswith("hash=") else "hash=" + "f" * 64 for line in acc.read_text().splitlines())
        + "\n"
    )
    logs = {acc: flag_run / "runs" / "resnet50-offline" / "Offline" / "AccuracyOnly" / "mlperf_log_accuracy.json"}
    problems = check_v10(rebuilt, logs)
    assert any(f"{acc}: hash does not match" in p for p in problems), problems
