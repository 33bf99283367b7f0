"""SSD-ResNet34 end to end on the small synthetic model: synthesize COCO, preprocess, infer with
onnxruntime, log responses as LoadGen does, score as accuracy-coco.py --use-inv-map: FP32 = 100 %;
corrupted outputs fall clearly below the round's bar (99 % of the FP32 score)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from mlperf_harness.benchmarks import ssd_resnet34 as ssd
from mlperf_harness.benchmarks.ssd_resnet34 import coco, model
from mlperf_harness.errors import HarnessError

N = 8
TARGET = 0.99  # v1.0's ssd-resnet34 accuracy target: 99 % of the FP32 mAP


def write_log(path: Path, rows: list[np.ndarray], order: list[int] | None = None) -> Path:
    order = list(range(len(rows))) if order is None else order
    entries = [
        {"seq_id": s, "qsl_idx": i, "data": rows[i].astype(np.float32).tobytes().hex()} for s, i in enumerate(order)
    ]
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    root = tmp_path_factory.mktemp("ssd-e2e")
    model_path = ssd.build_model(root / "model" / "ssd-small.onnx", seed=5, size="small")
    dataset = root / "coco"
    facts = ssd.synthesize_dataset(dataset, seed=5, n=N, model_path=model_path)
    assert facts["count"] == N and facts["synthetic"]
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def run_model(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(model.OUTPUTS, sess.run(list(model.OUTPUTS), feed), strict=True))

    samples = list(ssd.preprocess(dataset, image_size=model.image_size_of(model_path)))
    rows: list[np.ndarray] = []
    for start in range(0, len(samples), 3):  # batches of 3, the last one short
        batch = samples[start : start + 3]
        images = {model.INPUT: np.stack([s[model.INPUT] for s in batch])}
        rows += ssd.responses(ssd.infer(run_model, images), range(start, start + len(batch)))
    return dataset, rows


def test_dataset_is_coco_format_and_says_synthetic(run: tuple[Path, list[np.ndarray]]) -> None:
    dataset, _ = run
    data = json.loads((dataset / "annotations" / "instances_val2017.json").read_text())
    assert "SYNTHETIC" in data["info"]["description"] and "SYNTHETIC" in (dataset / "README.txt").read_text()
    assert len(data["images"]) == N and [c["id"] for c in data["categories"]] == [c["id"] for c in coco.CATEGORIES]
    for img in data["images"]:
        assert (dataset / "val2017" / img["file_name"]).read_bytes()[:2] == b"\xff\xd8"  # JPEG
        assert img["file_name"] == f"{img['id']:012d}.jpg"
    assert len(data["annotations"]) >= N  # the model's confident detections are the boxes
    for ann in data["annotations"]:
        _, _, w, h = ann["bbox"]
        assert w > 0 and h > 0 and ann["area"] == pytest.approx(w * h) and ann["iscrowd"] == 0
        assert ann["category_id"] in {c["id"] for c in coco.CATEGORIES}


def test_responses_are_the_references_rows(run: tuple[Path, list[np.ndarray]]) -> None:
    _, rows = run
    assert len(rows) == N
    for idx, r in enumerate(rows):
        assert r.dtype == np.float32 and r.size % 7 == 0
        det = r.reshape(-1, 7)
        assert np.all(det[:, 0] == idx)  # the QSL index first
        assert np.all(det[:, 5] >= 0.5) and np.all(np.diff(det[:, 5]) <= 0)
        assert np.all(det[:, 6] == np.round(det[:, 6])) and np.all((det[:, 6] >= 1) & (det[:, 6] <= 80))
        assert np.all(det[:, 3] > det[:, 1]) and np.all(det[:, 4] > det[:, 2])  # ymin < ymax, xmin < xmax


def test_fp32_scores_100_percent(
    run: tuple[Path, list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, rows = run
    metrics, line = ssd.score(write_log(tmp_path / "mlperf_log_accuracy.json", rows), dataset)
    assert line == "mAP=100.000%" and metrics["mAP"] == pytest.approx(100.0)
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
    # LoadGen's order and repeats do not matter: the first response per qsl_idx counts.
    order = [3, 1, 1, *range(N), 5]
    metrics, _ = ssd.score(write_log(tmp_path / "shuffled.json", rows, order), dataset)
    assert metrics["mAP"] == pytest.approx(100.0)


def shift_boxes(fraction: float) -> Callable[[np.ndarray], np.ndarray]:
    def corrupt(r: np.ndarray) -> np.ndarray:
        det = r.reshape(-1, 7).copy()
        h, w = det[:, 3] - det[:, 1], det[:, 4] - det[:, 2]
        det[:, [1, 3]] += fraction * h[:, None]
        det[:, [2, 4]] += fraction * w[:, None]
        return det.reshape(-1)

    return corrupt


def wrong_label(r: np.ndarray) -> np.ndarray:
    det = r.reshape(-1, 7).copy()
    det[:, 6] = det[:, 6] % 80 + 1
    return det.reshape(-1)


@pytest.mark.parametrize(
    ("name", "corrupt", "below"),
    [
        ("boxes shifted by 5 % of their size", shift_boxes(0.05), 90.0),
        ("boxes shifted by 20 % of their size", shift_boxes(0.20), 20.0),
        ("labels off by one (no inverse map)", wrong_label, 1.0),
    ],
)
def test_corrupted_outputs_fail_the_target(
    run: tuple[Path, list[np.ndarray]],
    tmp_path: Path,
    name: str,
    corrupt: Callable[[np.ndarray], np.ndarray],
    below: float,
) -> None:
    dataset, rows = run
    fp32, _ = ssd.score(write_log(tmp_path / "fp32.json", rows), dataset)
    metrics, line = ssd.score(write_log(tmp_path / "bad.json", [corrupt(r) for r in rows]), dataset)
    print(f"{name}: {line} (bar {TARGET * fp32['mAP']:.3f}%)")
    assert metrics["mAP"] < TARGET * fp32["mAP"] and metrics["mAP"] < below


def test_missing_responses_count_as_misses(run: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    dataset, rows = run
    empty = [r if i % 2 else np.zeros(0, np.float32) for i, r in enumerate(rows)]
    metrics, _ = ssd.score(write_log(tmp_path / "half.json", empty), dataset)
    assert metrics["mAP"] < TARGET * 100.0
    metrics, line = ssd.score(write_log(tmp_path / "none.json", [np.zeros(0, np.float32)] * N), dataset)
    assert line == "mAP=0.000%"


def test_bad_logs_name_the_file(run: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    dataset, rows = run
    log = write_log(tmp_path / "mlperf_log_accuracy.json", rows)
    log.write_text(log.read_text()[:50])
    with pytest.raises(HarnessError, match=r"mlperf_log_accuracy\.json: not valid JSON"):
        ssd.score(log, dataset)
    with pytest.raises(HarnessError, match="missing accuracy log"):
        ssd.score(tmp_path / "absent.json", dataset)
    with pytest.raises(HarnessError, match=r"qsl_idx 99 is outside the 8 images"):
        far = tmp_path / "far.json"
        far.write_text(json.dumps([{"seq_id": 0, "qsl_idx": 99, "data": rows[0].tobytes().hex()}]))
        ssd.score(far, dataset)


def test_synthesis_is_deterministic(run: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    dataset, _ = run
    model_path = ssd.build_model(tmp_path / "m.onnx", seed=5, size="small")
    ssd.synthesize_dataset(tmp_path / "again", seed=5, n=2, model_path=model_path)
    first = json.loads((dataset / "annotations" / "instances_val2017.json").read_text())
    again = json.loads((tmp_path / "again" / "annotations" / "instances_val2017.json").read_text())
    assert again["images"] == first["images"][:2]
    two = {img["id"] for img in again["images"]}
    assert again["annotations"] == [a for a in first["annotations"] if a["image_id"] in two]
    for img in again["images"]:
        name = img["file_name"]
        assert (tmp_path / "again" / "val2017" / name).read_bytes() == (dataset / "val2017" / name).read_bytes()
