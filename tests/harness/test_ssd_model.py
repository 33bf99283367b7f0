"""The synthetic SSD-ResNet34: the official file's interface, the reference's default boxes and
feature maps, NMS in the graph, determinism."""

from __future__ import annotations

import itertools
from math import sqrt
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlperf_harness.benchmarks.ssd_resnet34 import coco, model


def reference_dboxes(fig: int, feat: list[int]) -> np.ndarray:
    """dboxes_R34_coco / DefaultBoxes written out: steps, scales, shapes, then cells row by row."""
    steps = [int(fig / f) for f in feat]
    scales = [int(s * fig / 300) for s in [21, 45, 99, 153, 207, 261, 315]]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    out = []
    for idx, f in enumerate(feat):
        fk = fig // steps[idx]
        sk1, sk2 = scales[idx] / fig, scales[idx + 1] / fig
        sizes = [(sk1, sk1), (sqrt(sk1 * sk2), sqrt(sk1 * sk2))]
        for a in ratios[idx]:
            sizes += [(sk1 * sqrt(a), sk1 / sqrt(a)), (sk1 / sqrt(a), sk1 * sqrt(a))]
        for w, h in sizes:
            for i, j in itertools.product(range(f), range(f)):
                out.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    return np.clip(np.array(out, dtype=np.float32), 0, 1)


def test_default_boxes_are_the_references_at_1200() -> None:
    assert model.feature_sizes(1200) == [50, 25, 13, 7, 3, 3]
    boxes = model.default_boxes(1200)
    assert boxes.shape == (15130, 4)
    np.testing.assert_array_equal(boxes, reference_dboxes(1200, [50, 25, 13, 7, 3, 3]))
    small = model.VARIANTS["small"].image_size
    np.testing.assert_array_equal(model.default_boxes(small), reference_dboxes(small, model.feature_sizes(small)))
    with pytest.raises(ValueError, match="too small"):
        model.feature_sizes(300)


def test_full_graph_has_the_official_interface() -> None:
    m = model.build(0, "full", calibrate=False)  # calibration runs the network: a GPU-sized job
    onnx.checker.check_model(m)
    (inp,) = m.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # The official graph's batch is 1; this one's is a dimension (any batch).
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 1200, 1200]
    outs = {o.name: o.type.tensor_type.elem_type for o in m.graph.output}
    assert outs == {
        "bboxes": onnx.TensorProto.FLOAT,
        "labels": onnx.TensorProto.INT64,
        "scores": onnx.TensorProto.FLOAT,
    }
    assert "NonMaxSuppression" in {n.op_type for n in m.graph.node}
    params = sum(int(np.prod(t.dims)) for t in m.graph.initializer if len(t.dims) == 4)
    assert 19e6 < params < 21e6  # the official model has about 20 million parameters
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    head_cells = sorted(
        {d[2] for n in m.graph.node if n.op_type == "Conv" for d in [dims[n.output[0]]] if d[1] in (16, 24, 324, 486)},
        reverse=True,
    )
    assert head_cells == [50, 25, 13, 7, 3]  # the last two maps are both 3x3


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.build_model(tmp_path_factory.mktemp("ssd") / "small.onnx", seed=3, size="small")


def test_small_model_detects_like_the_official(small_model: Path) -> None:
    sess = ort.InferenceSession(str(small_model), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["bboxes", "labels", "scores"]
    size = model.image_size_of(small_model)
    confident = 0
    for i in range(4):
        x = coco.preprocess_image(coco.synthetic_image(11, i), size)[None]
        boxes, labels, scores = sess.run(None, {"image": x})
        n = scores.shape[1]
        assert boxes.shape == (1, n, 4) and labels.shape == (1, n) and n <= 200
        assert boxes.dtype == np.float32 and labels.dtype == np.int64 and scores.dtype == np.float32
        assert np.all(np.diff(scores[0]) <= 0) and np.all(scores > 0.05)  # sorted, above NMS's threshold
        assert np.all((labels >= 1) & (labels <= 80))
        assert np.all(boxes[0, :, 2] > boxes[0, :, 0]) and np.all(boxes[0, :, 3] > boxes[0, :, 1])  # ltrb
        confident += int((scores >= 0.5).sum())
    assert confident >= 8  # calibrated: images have detections the reference reports


def test_same_seed_same_model(small_model: Path, tmp_path: Path) -> None:
    again = model.build_model(tmp_path / "again.onnx", seed=3, size="small")
    assert again.read_bytes() == small_model.read_bytes()
    other = model.build(4, "small")
    assert other.SerializeToString() != small_model.read_bytes()


def test_an_image_without_detections(small_model: Path) -> None:
    from mlperf_harness.benchmarks.ssd_resnet34 import pipeline

    # NMS's score threshold raised to 1: nothing passes, so the graph's TopK takes k = 0.
    m = onnx.load(str(small_model))
    (nms,) = [n for n in m.graph.node if n.op_type == "NonMaxSuppression"]
    (threshold,) = [t for t in m.graph.initializer if t.name == nms.input[4]]
    threshold.CopyFrom(onnx.numpy_helper.from_array(np.array(1.0, np.float32), threshold.name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    size = model.image_size_of(small_model)
    photo = coco.preprocess_image(coco.synthetic_image(11, 0), size)
    boxes, labels, scores = sess.run(None, {"image": photo[None]})
    assert boxes.shape == (1, 0, 4) and labels.shape == (1, 0) and scores.shape == (1, 0)

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(model.OUTPUTS, sess.run(list(model.OUTPUTS), feed), strict=True))

    out = pipeline.infer(run, {"image": photo[None]})
    assert out["bboxes"].shape == (1, 0, 4) and out["scores"].shape == (1, 0)
    assert pipeline.responses(out, [0])[0].size == 0  # the reference logs no bytes for it


def test_v1_0_round_values() -> None:
    from mlperf_harness.suites import load_suite

    rule = load_suite("v1.0").rule("ssd-resnet34")
    lg = rule.loadgen
    assert (lg.datasetSize, lg.performanceSampleCount, lg.test01SamplingTarget) == (5000, 64, 256)
    assert (lg.serverLatencyMs, lg.multiStreamLatencyMs, lg.multiStreamTargetQps) == (100, 66, 15)
    assert rule.audits == ["TEST01", "TEST04-A", "TEST04-B", "TEST05"]
