"""resnet50 preprocessing equals the reference's on real photographs at ImageNet-like sizes.

The reference (mlcommons/inference, vision/classification_and_detection, ``pre_process_vgg``)
reads each JPEG with ``cv2.imread``, converts BGR to RGB, resizes the short side to 256 with
``cv2.INTER_AREA``, crops the centre 224x224, subtracts the channel means and transposes to CHW.
Its operations are written out below and compared bit for bit with the harness's.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from mlperf_harness.benchmarks.resnet50 import decode, preprocess_image

# Photographs that scikit-image ships: sizes like ImageNet's (short side 300-872, both orientations).
PHOTOS = {
    "coffee": lambda: skimage.data.coffee(),  # 400x600
    "coffee-portrait": lambda: np.ascontiguousarray(np.rot90(skimage.data.coffee())),  # 600x400
    "chelsea": lambda: skimage.data.chelsea(),  # 300x451
    "rocket": lambda: skimage.data.rocket(),  # 427x640
    "astronaut": lambda: skimage.data.astronaut(),  # 512x512
    "hubble": lambda: skimage.data.hubble_deep_field(),  # 872x1000
}


def reference(path: Path) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    height, width, _ = img.shape
    new = int(100.0 * 224 / 87.5)
    h, w = (int(new * height / width), new) if height > width else (new, int(new * width / height))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    left, top = int((w - 224) / 2), int((h - 224) / 2)
    img = np.asarray(img[top : int((h + 224) / 2), left : int((w + 224) / 2)], dtype="float32")
    img -= np.array([123.68, 116.78, 103.94], dtype=np.float32)
    return img.transpose([2, 0, 1])


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_preprocessing_equals_the_reference_on_photographs(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.JPEG"
    assert cv2.imwrite(str(path), cv2.cvtColor(PHOTOS[name](), cv2.COLOR_RGB2BGR))
    ours = preprocess_image(decode(path))
    ref = reference(path)
    assert ours.shape == ref.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.array_equal(ours, ref), f"max difference {np.abs(ours - ref).max()}"


def test_the_comparison_tells_resize_filters_apart(tmp_path: Path) -> None:
    """A bilinear resize (what the harness did when enlarging, and near what Pillow's BOX does at
    these non-integer factors) differs visibly from INTER_AREA on a real photograph."""
    path = tmp_path / "coffee.JPEG"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR))
    img = decode(path)
    bilinear = cv2.resize(img, (384, 256), interpolation=cv2.INTER_LINEAR)[16:240, 80:304].astype(np.float32)
    ours = preprocess_image(img).transpose(1, 2, 0) + np.array([123.68, 116.78, 103.94], dtype=np.float32)
    assert np.abs(ours - bilinear).max() > 10
