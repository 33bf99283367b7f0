"""3d-unet (KiTS19) end to end on the small synthetic model: synthesize, preprocess, sliding
window with onnxruntime, an accuracy log from the responses, mean DICE; then broken outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import onnxruntime as ort
import pytest
from mlperf_harness.benchmarks.unet3d import build_model, infer, preprocess, responses, score, synthesize_dataset
from mlperf_harness.benchmarks.unet3d.kits19 import REFERENCE_DICE
from mlperf_harness.errors import HarnessError
from scipy import ndimage

SEED = 11
TARGET = 0.99  # 99 % of FP32, which is 1.0 on the synthetic set


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unet3d")
    model = build_model(root / "3dunet_kits19_small.onnx", SEED, "small")
    synthesize_dataset(root / "kits19" / "data", SEED, 3, model)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": sess.run(["output"], feed)[0]}

    samples = list(preprocess(root / "kits19" / "data", root / "preprocessed"))
    outputs = [infer(run, s, patch=32, batch_size=4) for s in samples]
    _write_log(root / "mlperf_log_accuracy.json", responses(outputs, samples))
    np.savez(root / "predictions.npz", *[o["prediction"] for o in outputs])
    return root


def _write_log(path: Path, rows: list[np.ndarray]) -> None:
    # LoadGen's accuracy log: responses in completion order, here reversed to show order does not matter.
    entries = [
        {"seq_id": n, "qsl_idx": i, "data": rows[i].tobytes().hex()} for n, i in enumerate(reversed(range(len(rows))))
    ]
    path.write_text(json.dumps(entries))


def test_layout_is_kits19_and_says_synthetic(run_dir: Path) -> None:
    data = run_dir / "kits19" / "data"
    assert (
        "SYNTHETIC" in (data / "README.md").read_text() and json.loads((data / "dataset.json").read_text())["synthetic"]
    )
    shapes = set()
    for case in ("case_00000", "case_00001", "case_00002"):
        img: Any = nibabel.load(data / case / "imaging.nii.gz")
        seg: Any = nibabel.load(data / case / "segmentation.nii.gz")
        assert img.shape == seg.shape and img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
        shapes.add(img.shape)
    assert len(shapes) == 3  # samples of varying size, stored as they are
    assert (run_dir / "preprocessed" / "preprocessed_files.pkl").is_file()
    assert (run_dir / "preprocessed" / "nifti" / "case_00002" / "segmentation.nii.gz").is_file()


def test_fp32_scores_dice_one(run_dir: Path) -> None:
    metrics, line = score(run_dir / "mlperf_log_accuracy.json", run_dir / "preprocessed")
    assert metrics == {"mean": 1.0, "kidney": 1.0, "tumor": 1.0}
    assert line == "Accuracy: mean = 1.00000, kidney = 1.0000, tumor = 1.0000"
    # The raw dataset scores the same: its labels are preprocessed again.
    assert score(run_dir / "mlperf_log_accuracy.json", run_dir / "kits19" / "data")[0] == metrics


def test_eroded_prediction_scores_below_target(run_dir: Path, tmp_path: Path) -> None:
    eroded = []
    for pred in np.load(run_dir / "predictions.npz").values():
        out = np.zeros_like(pred)
        for cls in (1, 2):
            out[ndimage.binary_erosion(pred == cls)] = cls
        eroded.append(out.reshape(-1))
    _write_log(tmp_path / "eroded.json", eroded)
    metrics, line = score(tmp_path / "eroded.json", run_dir / "preprocessed")
    assert metrics["mean"] < TARGET * 1.0, line
    assert pytest.approx(0.853083) == TARGET * REFERENCE_DICE  # the round's 99 % target on real data


def test_bad_logs_are_named(run_dir: Path, tmp_path: Path) -> None:
    entries = json.loads((run_dir / "mlperf_log_accuracy.json").read_text())
    (tmp_path / "short.json").write_text(json.dumps(entries[:2]))
    with pytest.raises(HarnessError, match=r"short\.json: 2 predictions for 3 cases"):
        score(tmp_path / "short.json", run_dir / "preprocessed")
    entries[0]["data"] = entries[0]["data"][:-2]
    (tmp_path / "cut.json").write_text(json.dumps(entries))
    with pytest.raises(HarnessError, match=r"cut\.json: qsl_idx 2 .* bytes, expected"):
        score(tmp_path / "cut.json", run_dir / "preprocessed")
    (tmp_path / "trunc.json").write_text((run_dir / "mlperf_log_accuracy.json").read_text()[:1000])
    with pytest.raises(HarnessError, match=r"trunc\.json: not valid JSON"):
        score(tmp_path / "trunc.json", run_dir / "preprocessed")
