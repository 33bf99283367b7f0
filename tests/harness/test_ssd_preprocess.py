"""SSD-ResNet34 preprocessing against the reference's operations (pre_process_coco_resnet34 on
cv2.imread, coco-1200 NCHW), written out here in numpy, on real photographs in the COCO layout."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from mlperf_harness.benchmarks.ssd_resnet34 import coco
from mlperf_harness.errors import HarnessError

PHOTOS = {
    "coffee": lambda: skimage.data.coffee(),  # 400x600
    "chelsea": lambda: skimage.data.chelsea(),  # 300x451
    "rocket": lambda: skimage.data.rocket(),  # 427x640
    "astronaut": lambda: skimage.data.astronaut(),  # 512x512
    "gray-camera": lambda: np.stack([skimage.data.camera()] * 3, axis=-1),  # 512x512, grey JPEG below
}


def write_coco(root: Path, photos: dict[str, np.ndarray]) -> list[str]:
    (root / "val2017").mkdir(parents=True)
    images = []
    for i, (name, rgb) in enumerate(photos.items()):
        file_name = f"{i + 1:012d}.jpg"
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(root / "val2017" / file_name), bgr[..., 0] if name.startswith("gray") else bgr)
        images.append({"id": i + 1, "file_name": file_name, "height": rgb.shape[0], "width": rgb.shape[1]})
    (root / "annotations").mkdir()
    data = {"images": images, "annotations": [], "categories": coco.CATEGORIES}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return [img["file_name"] for img in images]


def bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's INTER_LINEAR: pixel centres aligned, neighbours clamped at the border, no antialiasing."""

    def taps(n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(size) + 0.5) * (n_src / size) - 0.5
        lo = np.floor(pos).astype(int)
        frac = (pos - lo).astype(np.float32)
        frac[lo < 0], lo[lo < 0] = 0, 0
        frac[lo >= n_src - 1], lo[lo >= n_src - 1] = 0, n_src - 1
        return lo, np.minimum(lo + 1, n_src - 1), frac

    y0, y1, fy = taps(img.shape[0])
    x0, x1, fx = taps(img.shape[1])
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def reference(path: Path, size: int) -> np.ndarray:
    bgr = np.asarray(cv2.imread(str(path)), dtype=np.float32)
    rgb = bilinear(bgr[..., ::-1], size)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((rgb / 255.0 - mean) / std).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [1200, 400])
def test_preprocess_matches_reference_on_photographs(tmp_path: Path, size: int) -> None:
    names = write_coco(tmp_path, {k: f() for k, f in PHOTOS.items()})
    samples = list(coco.preprocess(tmp_path, image_size=size))
    assert len(samples) == len(names)
    for sample, name in zip(samples, names, strict=True):
        x = sample["image"]
        assert x.shape == (3, size, size) and x.dtype == np.float32 and x.flags.c_contiguous
        assert list(sample) == ["image"]
        np.testing.assert_allclose(x, reference(tmp_path / "val2017" / name, size), atol=2e-5, err_msg=name)


def test_preprocess_count_and_order(tmp_path: Path) -> None:
    write_coco(tmp_path, {k: f() for k, f in list(PHOTOS.items())[:3]})
    samples = list(coco.preprocess(tmp_path, image_size=400, count=2))
    assert len(samples) == 2


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    names = write_coco(tmp_path, {"coffee": skimage.data.coffee(), "rocket": skimage.data.rocket()})
    jpeg = tmp_path / "val2017" / names[1]
    jpeg.write_bytes(jpeg.read_bytes()[:5000])
    with pytest.raises(HarnessError, match=rf"{names[1]}: corrupt or truncated"):
        list(coco.preprocess(tmp_path, image_size=400))
    jpeg.unlink()
    with pytest.raises(HarnessError, match=rf"{names[1]}: missing image"):
        list(coco.preprocess(tmp_path, image_size=400))
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.write_text(ann.read_text()[:100])
    with pytest.raises(HarnessError, match=r"instances_val2017\.json: not valid JSON"):
        list(coco.preprocess(tmp_path))
    ann.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(HarnessError, match=r"images\[0\] lacks file_name, height, width"):
        list(coco.preprocess(tmp_path))
    ann.unlink()
    with pytest.raises(HarnessError, match=r"instances_val2017\.json: missing file"):
        list(coco.preprocess(tmp_path))


def test_find_root_after_unzip(tmp_path: Path) -> None:
    write_coco(tmp_path / "coco", {"coffee": skimage.data.coffee()})
    assert coco.find_root(tmp_path) == tmp_path / "coco"
    with pytest.raises(HarnessError, match="missing file"):
        coco.find_root(tmp_path / "coco" / "val2017")


def test_categories_are_cocos_80() -> None:
    ids = [c["id"] for c in coco.CATEGORIES]
    assert len(ids) == 80 and ids == sorted(ids) and ids[0] == 1 and ids[-1] == 90
    names = {c["id"]: c["name"] for c in coco.CATEGORIES}
    assert (
        names[1] == "person" and names[13] == "stop sign" and names[67] == "dining table" and names[90] == "toothbrush"
    )
    assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83} & set(ids)
