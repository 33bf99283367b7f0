"""`mlperf run` (the local runner) and `mlperf submission`, on real LoadGen and onnxruntime."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from subprocess import PIPE

import pytest
import yaml
from mlperf_harness.submission import check_tree

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


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_at_any_moment_exits_130_and_the_rerun_resumes(tmp_path: Path) -> None:
    """Ctrl-C at the start of every step and at random moments inside it, while another process
    keeps a core busy: each interrupted run exits 130 and the next resumes after the last
    completed step, and the last, uninterrupted, run completes the pipeline and passes."""
    work = tmp_path / "w"
    steps_dir = work / "runs" / "resnet50-offline" / "steps"
    rng = random.Random(20261203)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    interrupted: list[str] = []
    try:
        while True:
            done_before = {p.name: p.stat().st_mtime_ns for p in steps_dir.glob("*.json")}
            done = {Path(name).stem for name in done_before}
            since = time.time_ns()
            proc = subprocess.Popen(
                [MLPERF, "run", "--workdir", str(work), *FLAGS],
                cwd=tmp_path,
                text=True,
                stdout=PIPE,
                stderr=PIPE,
                # As at a terminal: a shell without job control starts background commands with SIGINT
                # ignored, which every child inherits (a CI launched with `&` ran the pipeline to the end).
                preexec_fn=_sigint_default,
            )
            deadline = time.monotonic() + 300
            new: dict[str, int] = {}
            while proc.poll() is None and not new and time.monotonic() < deadline:
                time.sleep(0.05)
                # A step this run began: its log written since the start (a log can be there from an earlier,
                # interrupted run), not one of the steps done before, nor one interrupted already.
                logs = {p.stem: p.stat().st_mtime_ns for p in steps_dir.glob("*.log")}
                new = {s: t for s, t in logs.items() if t >= since and s not in done and s not in interrupted}
            if proc.poll() is None:
                time.sleep(rng.uniform(0, 1.5))  # at the step's start, or somewhere inside it
                proc.send_signal(signal.SIGINT)
                interrupted.append(max(new, key=new.__getitem__) if new else "?")
            out, err = proc.communicate(timeout=300)
            for name, stamp in done_before.items():  # a completed step is never redone
                assert (steps_dir / name).stat().st_mtime_ns == stamp, f"{name} was redone"
            if proc.returncode == -signal.SIGINT and "MLPerf results: resnet50-offline" in out:
                # The pipeline done, the signal landed as the process exited, after the CLI's handler:
                # Python then dies by SIGINT, which a shell reports as 130 too. The rerun finds every step done.
                continue
            if proc.returncode != 130:
                break
            assert "resume" in err, err[-2000:]
    finally:
        burner.kill()
    assert len(interrupted) >= 8, (interrupted, proc.returncode, out[-1000:], err[-3000:])  # each step interrupted once
    assert proc.returncode == 0 and "MLPerf results: resnet50-offline" in out, (interrupted, out + err)
    assert "accuracy=100.000%" in (steps_dir / "run-offline-accuracy.log").read_text()


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
    assert not list(tree.glob("v6.1")), "a v1.0 run's tree is v1.0's only"
    results = list(tree.glob("v1.0/closed/*/results/*/resnet50/*"))
    assert {p.name for p in results} == {"Offline", "Server"}

    offline = next(p for p in results if p.name == "Offline")
    (offline / "performance" / "run_1" / "mlperf_log_detail.txt").unlink()
    bad = mlperf("submission", "--check", str(tree / "v1.0"), "--round", "v1.0", cwd=tmp_path)
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
    acc = next(rebuilt.glob("v1.0/closed/*/results/*/resnet50/Offline/accuracy/accuracy.txt"))
    acc.write_text(
        "\n".join(line if not line.startswith("hash=") else "hash=" + "f" * 64 for line in acc.read_text().splitlines())
        + "\n"
    )
    logs = {acc: flag_run / "runs" / "resnet50-offline" / "Offline" / "AccuracyOnly" / "mlperf_log_accuracy.json"}
    problems = check_tree(rebuilt / "v1.0", "v1.0", logs)
    assert any(f"{acc}: hash does not match" in p for p in problems), problems


def test_a_submission_for_a_job_writes_a_tarball_and_its_findings(
    flag_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a campaign's submission Job runs: the trees as one tarball, the check's findings as its outcome,
    exit 0 whatever they are (the same check would fail again on a retry)."""
    from mlperf_harness.results import read_termination_message
    from mlperf_harness.submission import submission_command

    monkeypatch.setenv("MLPERF_TERMINATION_LOG", str(tmp_path / "termination-log"))
    tarball = tmp_path / "campaign" / "submission.tar.gz"
    args = ["--workdir", str(flag_run), "--runs", "resnet50-offline", "--out", str(tmp_path / "tree"), "--no-fail"]
    assert submission_command([*args, "--tarball", str(tarball)]) == 0
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert any(
        n.startswith("v1.0/closed/") and n.endswith("Offline/performance/run_1/mlperf_log_summary.txt") for n in names
    )
    outcome = read_termination_message((tmp_path / "termination-log").read_text())
    assert outcome.step == "submission" and outcome.message.startswith("1 run(s) in 1 tree(s), ")
    assert outcome.ok == ("0 problem(s)" in outcome.message)
    assert not list(tarball.parent.glob(".*.tmp")), "no half-written tarball is left"
