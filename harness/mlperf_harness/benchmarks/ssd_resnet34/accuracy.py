"""mAP of an mlperf_log_accuracy.json, computed as the official tools/accuracy-coco.py does with
``--use-inv-map`` (pycocotools' COCOeval on boxes, the stats[0] AP at IoU 0.50:0.95)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import HarnessError
from .coco import ANNOTATIONS, IMAGES, load_annotations

STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_detections(data: np.ndarray, image: dict[str, Any], inv_map: list[int]) -> list[dict[str, Any]]:
    """One response's detections as pycocotools results: normalised y/x corners scaled to the
    image's pixels in float32 (as the script computes them), COCO xywh boxes, labels mapped
    through the inverse map (model label k -> the k-th category id)."""
    result = []
    for i in range(0, len(data) - len(data) % 7, 7):
        _, ymin, xmin, ymax, xmax, score, label = data[i : i + 7]
        height, width = image["height"], image["width"]
        ymin, xmin, ymax, xmax = ymin * height, xmin * width, ymax * height, xmax * width
        result.append(
            {
                "image_id": image["id"],
                "category_id": inv_map[int(label)],
                "bbox": [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)],
                "score": float(score),
            }
        )
    return result


def read_accuracy_log(path: Path) -> list[dict[str, Any]]:
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing accuracy log (run the accuracy mode first)") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); the run was cut short") from None
    if not isinstance(results, list) or any(
        not isinstance(e, dict) or not {"qsl_idx", "data"} <= e.keys() for e in results
    ):
        raise HarnessError(f"{path}: not a LoadGen accuracy log (a list of {{seq_id, qsl_idx, data}})")
    return results


def score(accuracy_log: Path, dataset_dir: Path, *, quiet: bool = True) -> tuple[dict[str, float], str]:
    """(metrics, the script's last line ``mAP=xx.xxx%``). Metrics are pycocotools' 12 summary
    stats in percent, ``mAP`` first (the value the v1.0 checker compares with 0.99 x 20); a range
    without ground truth is -100 (pycocotools' -1). pycocotools' own progress lines and table go to
    stdout unless ``quiet``; the line is always printed."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    load_annotations(dataset_dir)  # clear errors for a missing or broken file
    chatter = io.StringIO() if quiet else None
    with contextlib.redirect_stdout(chatter) if chatter else contextlib.nullcontext():
        coco_gt = COCO(str(dataset_dir / ANNOTATIONS))
    inv_map = [0, *coco_gt.getCatIds()]  # label 0 (background) is never a detection
    image_map = coco_gt.dataset["images"]
    detections: list[dict[str, Any]] = []
    image_ids: set[int] = set()
    seen: set[int] = set()
    for entry in read_accuracy_log(accuracy_log):
        idx = int(entry["qsl_idx"])
        if idx in seen:
            continue  # LoadGen may log an image more than once
        seen.add(idx)
        if not 0 <= idx < len(image_map):
            raise HarnessError(
                f"{accuracy_log}: qsl_idx {idx} is outside the {len(image_map)} images of "
                f"{dataset_dir / ANNOTATIONS}; score the log against the dataset it was run on"
            )
        data = np.frombuffer(bytes.fromhex(entry["data"]), np.float32)
        image = image_map[idx]
        image_ids.add(image["id"])
        if len(data) < 7:
            continue  # an image without detections still counts
        if any(int(d) != idx for d in data[0::7]):
            print(f"ERROR: loadgen({idx}) and payload({int(data[0])}) disagree on image_idx")
        if any(not 0 <= int(lab) < len(inv_map) for lab in data[6::7]):
            raise HarnessError(f"{accuracy_log}: qsl_idx {idx} has a label outside 1..{len(inv_map) - 1}")
        for det in coco_detections(data, image, inv_map):
            detections.append({**det, "image_loc": str(dataset_dir / IMAGES / image["file_name"])})
    stats = np.zeros(len(STAT_NAMES))
    if detections:  # the official script fails on a log without any detection; that is mAP 0
        with contextlib.redirect_stdout(chatter) if chatter else contextlib.nullcontext():
            coco_dt = coco_gt.loadRes(detections)
            evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
            evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = np.asarray(evaluator.stats)
    line = f"mAP={100.0 * stats[0]:.3f}%"
    print(line)
    return {name: 100.0 * float(v) for name, v in zip(STAT_NAMES, stats, strict=True)}, line
