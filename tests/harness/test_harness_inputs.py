"""Bad inputs end in one line naming the file, and leave nothing half-written behind."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness_support import PYTHONPATH, make_spec
from mlperf_harness import steps
from mlperf_harness.errors import HarnessError
from mlperf_harness.fsutil import write_marker
from mlperf_harness.workspace import Workspace


def _leftovers(directory: Path) -> list[str]:
    """Anything that looks half-written: temp files, .part downloads, staging dirs."""
    return [p.name for p in directory.rglob("*") if p.name.endswith((".tmp", ".part", ".staging"))]


def _imagenet_dir(workdir: Path, target: Path, n: int = 4) -> Path:
    """A user-supplied ImageNet-layout directory: the first n synthetic JPEGs and their labels."""
    src = next((workdir / "cache" / "dataset").glob("*/images"))
    target.mkdir(parents=True)
    lines = (src / "val_map.txt").read_text().splitlines()[:n]
    for line in lines:
        shutil.copy(src / line.split()[0], target)
    (target / "val_map.txt").write_text("\n".join(lines) + "\n")
    return target


def test_corrupt_image_names_the_file(workdir: Path, tmp_path: Path) -> None:
    data = _imagenet_dir(workdir, tmp_path / "imagenet")
    victim = sorted(data.glob("*.JPEG"))[1]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    ws = Workspace(make_spec(dataset={"pvc": {"claimName": "imagenet", "path": str(data)}}), tmp_path / "w", "bad")
    assert steps.download_data(ws).ok
    with pytest.raises(HarnessError) as err:
        steps.preprocess(ws)
    assert str(victim) in str(err.value) and "\n" not in str(err.value)
    out = ws.preprocessed_dir
    assert not list(out.glob("*.npy")) and not (out / ".complete").exists()
    assert _leftovers(tmp_path / "w") == []


def test_missing_image_listed_in_val_map(workdir: Path, tmp_path: Path) -> None:
    data = _imagenet_dir(workdir, tmp_path / "imagenet")
    missing = sorted(data.glob("*.JPEG"))[-1]
    missing.unlink()
    ws = Workspace(make_spec(dataset={"pvc": {"claimName": "x", "path": str(data)}}), tmp_path / "w", "bad")
    with pytest.raises(HarnessError, match=re.escape(missing.name)):
        steps.download_data(ws)
    assert not (ws.dataset_dir / ".complete").exists()


def test_missing_model_names_the_file(workspace: Any) -> None:
    ws = workspace(model={"pvc": {"claimName": "models", "path": "/nonexistent/resnet50_v1.onnx"}})
    with pytest.raises(HarnessError) as err:
        steps.download_model(ws)
    assert "resnet50_v1.onnx" in str(err.value)
    assert not (ws.model_dir / ".complete").exists()
    assert not (ws.model_dir / "resnet50_v1.onnx").exists()


def test_model_deleted_after_download_is_reported(workspace: Any, tmp_path: Path) -> None:
    ws = workspace()
    root = tmp_path / "copy"
    shutil.copytree(ws.root / "cache", root / "cache")
    ws2 = Workspace(ws.spec, root, "m")
    (ws2.model_dir / "resnet50_v1.onnx").unlink()
    with pytest.raises(HarnessError, match=r"resnet50_v1\.onnx: missing file"):
        steps.run_harness(ws2, "Offline", "PerformanceOnly")


def test_corrupt_model_file(workspace: Any, tmp_path: Path) -> None:
    bad = tmp_path / "resnet50_v1.onnx"
    bad.write_bytes(b"this is not an onnx model")
    ws = workspace(model={"pvc": {"claimName": "models", "path": str(bad)}})
    ws.root = tmp_path / "w"
    with pytest.raises(HarnessError, match=r"resnet50_v1\.onnx: not a valid ONNX model"):
        steps.download_model(ws)
    assert not (ws.model_dir / "resnet50_v1.onnx").exists()


def test_wrong_shape_through_the_cli_exits_2_with_one_line(workdir: Path, tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(workdir / "cache", root / "cache")
    spec = make_spec(loadgen={"minDurationMs": 100, "minQueryCount": 1})
    ws = Workspace(spec, root, "cli")
    samples = next(ws.preprocessed_dir.glob("*.npy"))
    np.save(samples, np.zeros((8, 3, 112, 112), dtype=np.float32))
    write_marker(ws.preprocessed_dir, "preprocess", [samples])  # consistent marker, wrong content
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlperf_harness.cli",
            "run-harness",
            "--scenario",
            "Offline",
            "--spec",
            spec.model_dump_json(),
            "--workdir",
            str(root),
            "--run",
            "cli",
            "-q",
        ],
        capture_output=True,
        text=True,
        env={"MLPERF_TERMINATION_LOG": str(tmp_path / "tl"), "PATH": "/usr/bin", **PYTHONPATH},
    )
    assert proc.returncode == 2, proc.stderr
    # One error line (a machine may add its own noise to stderr, e.g. a missing blkid).
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(samples) in lines[0] and "wrong tensor shape" in lines[0]
    outcome = json.loads((tmp_path / "tl").read_text())
    assert outcome["ok"] is False and "wrong tensor shape" in outcome["message"]
    assert not (ws.harness_dir("Offline", "PerformanceOnly") / ".complete").exists()
