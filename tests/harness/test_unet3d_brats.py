"""3d-unet v1.0 (BraTS 2019): nnU-Net's preprocessing against its operations written out here,
the synthetic Generic_UNet's interface, and end to end on the small model (mean DICE 1.0, and an
eroded prediction below target)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlperf_harness.benchmarks.unet3d import brats
from mlperf_harness.benchmarks.unet3d.brats_synthetic import build_model, synthesize_dataset
from mlperf_harness.benchmarks.unet3d.model import BRATS19, build_arch
from mlperf_harness.errors import HarnessError
from scipy import ndimage


def _reference_preprocess(data: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """nnU-Net: crop_to_nonzero, resample_and_normalize (no resampling at 1 mm: float64), pad_nd_image."""
    nonzero = np.zeros(data.shape[1:], dtype=bool)
    for c in range(data.shape[0]):
        nonzero = nonzero | (data[c] != 0)
    nonzero = ndimage.binary_fill_holes(nonzero)
    where = np.where(nonzero)
    box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
    cropped = np.vstack([data[c][box][None] for c in range(data.shape[0])]).astype(float)
    seg = nonzero[box].astype(int)[None]
    seg[seg == 0] = -1
    seg[seg > 0] = 0
    mask = seg[-1] >= 0
    for c in range(len(cropped)):
        cropped[c][mask] = (cropped[c][mask] - cropped[c][mask].mean()) / (cropped[c][mask].std() + 1e-8)
        cropped[c][mask == 0] = 0
    cropped = cropped.astype(np.float32)
    diff = np.array(shape) - np.array(cropped.shape[1:])
    return np.pad(cropped, [[0, 0]] + [[d // 2, d // 2 + d % 2] for d in diff], "constant", constant_values=0)


def test_preprocess_matches_nnunet() -> None:
    rng = np.random.default_rng(2)
    data = np.zeros((4, 40, 50, 30), dtype=np.float32)
    data[:, 5:33, 9:47, 4:26] = rng.integers(1, 900, (4, 28, 38, 22))
    data[:, 15:20, 20:25, 10:14] = 0  # a hole: inside the filled mask, so normalised too
    data[2, 3, 3, 3] = 50  # one modality alone widens the box
    volume, facts = brats.preprocess_volume(data, np.ones(3), (32, 48, 32))
    np.testing.assert_array_equal(volume, _reference_preprocess(data, (32, 48, 32)))
    assert facts == {
        "crop_bbox": [[3, 33], [3, 47], [3, 26]],
        "size_after_cropping": [30, 44, 23],
        "original_size_of_raw_data": [40, 50, 30],
    }
    with pytest.raises(HarnessError, match="exceeds the model's input"):
        brats.preprocess_volume(data, np.ones(3), (16, 48, 32))
    with pytest.raises(HarnessError, match="1 mm isotropic"):
        brats.preprocess_volume(data, np.array([1.0, 1.0, 3.0]), (32, 48, 32))


def test_round_values() -> None:
    assert len(set(brats.FOLD1_CASES)) == brats.DATASET_SIZE == 67
    assert brats.FOLD1_CASES[0] == "HGG__BraTS19_2013_13_1" and brats.FOLD1_CASES[-1] == "LGG__BraTS19_TCIA13_630_1"
    assert brats.PERFORMANCE_SAMPLE_COUNT == 16 and brats.REFERENCE_DICE == 0.853


@pytest.mark.parametrize("size", ["small", "full"])
def test_generic_unet_interface(size: str) -> None:
    arch = BRATS19[size]
    m = build_arch(1, arch)  # no calibration: a structural check only
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["input"] and m.graph.output[0].name == "output"
    shape = [d.dim_value or d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert shape == ["batch_size", 4, *arch.shape]
    heads = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in m.graph.output]
    assert heads == [["batch_size", 4, *(s // 2**k for s in arch.shape)] for k in range(5)]  # deep supervision
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops == {"Conv": 27, "InstanceNormalization": 22, "LeakyRelu": 22, "ConvTranspose": 5, "Concat": 5}
    if size == "full":
        assert arch.filters == (30, 60, 120, 240, 320) and arch.shape == (224, 224, 160)


def _write_log(path: Path, rows: list[np.ndarray]) -> None:
    path.write_text(json.dumps([{"seq_id": i, "qsl_idx": i, "data": r.tobytes().hex()} for i, r in enumerate(rows)]))


def test_end_to_end_small(tmp_path: Path) -> None:
    model = build_model(tmp_path / "224_224_160_small.onnx", 4, "small")
    data = tmp_path / "Task043_BraTS2019"
    synthesize_dataset(data, 4, 2, model)
    assert "SYNTHETIC" in json.loads((data / "dataset.json").read_text())["description"]
    assert (data / "imagesTr" / "HGG__BraTS19_SYNTH_001_1_0003.nii.gz").is_file()
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": sess.run(["output"], feed)[0]}

    samples = list(brats.preprocess(data, tmp_path / "pre"))
    assert [s["input"].shape for s in samples] == [(4, 64, 64, 32)] * 2
    rows = brats.responses(brats.infer(run, brats.collate(samples)), len(samples))
    assert all(r.nbytes == 2 * 4 * 64 * 64 * 32 for r in rows)
    _write_log(tmp_path / "fp32.json", rows)
    metrics, line = brats.score(tmp_path / "fp32.json", tmp_path / "pre")
    assert metrics["mean"] == 1.0, line
    assert line == "Accuracy: mean = 1.00000, whole tumor = 1.0000, tumor core = 1.0000, enhancing tumor = 1.0000"

    eroded = []
    for r in rows:
        labels = r.view(np.float16).reshape(4, 64, 64, 32).argmax(0)
        out = np.zeros_like(labels)
        for cls in (1, 2, 3):
            out[ndimage.binary_erosion(labels == cls)] = cls
        eroded.append(np.ascontiguousarray(np.eye(4, dtype=np.float16)[out].transpose(3, 0, 1, 2)).reshape(-1))
    _write_log(tmp_path / "eroded.json", eroded)
    metrics, line = brats.score(tmp_path / "eroded.json", tmp_path / "pre")
    assert metrics["mean"] < 0.99, line

    _write_log(tmp_path / "short.json", [r[:-2] for r in rows])
    with pytest.raises(HarnessError, match=r"short\.json: qsl_idx 0 holds"):
        brats.score(tmp_path / "short.json", tmp_path / "pre")
