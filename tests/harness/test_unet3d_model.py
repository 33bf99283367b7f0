"""The synthetic KiTS19 3D U-Net: the official model's interface and the reference's architecture."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from mlperf_harness.benchmarks.unet3d import model
from mlperf_harness.errors import HarnessError


def _reference_parameter_count(filters: tuple[int, ...], n_class: int = 3) -> int:
    """Parameters of the reference's Unet3D (pytorch_checkpoint_SUT.py): bias-free 3x3x3 convs
    with affine instance norm, transposed convs and the output conv with bias."""

    def block(cin: int, cout: int) -> int:
        return cin * cout * 27 + 2 * cout

    total = block(1, filters[0]) + block(filters[0], filters[0])
    for cin, cout in itertools.pairwise(filters):
        total += block(cin, cout) + block(cout, cout)
    total += 2 * block(filters[-1], filters[-1])
    ups = [(filters[-1], filters[-1]), *zip(reversed(filters[1:]), reversed(filters[:-1]), strict=True)]
    for cin, cout in ups:
        total += cin * cout * 8 + cout + block(2 * cout, cout) + block(cout, cout)
    return total + filters[0] * n_class + n_class


@pytest.mark.parametrize("size", ["small", "full"])
def test_interface_and_architecture(size: str) -> None:
    m = model.build(1, size)  # no calibration: a structural check only
    onnx.checker.check_model(m)
    patch = model.PATCH[size]
    (inp,), (out,) = m.graph.input, m.graph.output
    assert (inp.name, out.name) == ("input", "output")
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch_size", 1, patch, patch, patch]
    assert [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim] == [
        "batch_size",
        3,
        patch,
        patch,
        patch,
    ]
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops == {"Conv": 23, "InstanceNormalization": 22, "Relu": 22, "ConvTranspose": 5, "Concat": 5}
    params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    assert params == _reference_parameter_count(model.FILTERS[size])
    if size == "full":
        assert model.FILTERS["full"] == (32, 64, 128, 256, 320) and patch == 128
        assert params > 30_000_000  # the real model's ~31 M


def test_deterministic_and_calibrated(tmp_path: Path) -> None:
    import onnxruntime as ort
    from mlperf_harness.benchmarks.unet3d.synthetic import calibration_patches

    a = model.build_model(tmp_path / "a.onnx", 5, "small")
    b = model.build_model(tmp_path / "b.onnx", 5, "small")
    assert a.read_bytes() == b.read_bytes()
    assert model.patch_size(a) == 32
    assert "SYNTHETIC" in onnx.load(str(a)).doc_string
    sess = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    labels = sess.run(["output"], {"input": calibration_patches(5, 32)})[0].argmax(axis=1)
    share = np.bincount(labels.ravel(), minlength=3) / labels.size
    assert share[0] > 0.4 and share[1] > 0.1 and share[2] > 0.05  # all three classes present


def test_wrong_model_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(HarnessError, match=r"bad\.onnx: not a readable ONNX model"):
        model.patch_size(bad)
    with pytest.raises(HarnessError, match="use 'small' or 'full'"):
        model.build(1, "medium")
