"""The pytorch backend's general path (backends/torch_graph.py, with torch_ops, torch_rewrites and
torch_split) on every benchmark's small synthetic model, on the CPU: the same outputs as onnxruntime
on the same feeds, and bert run through the SUT.

Needs torch and onnx2torch (``PYTHONPATH=$HOME/.cache/mlperf-operator/torch-site:...``); CI has
neither, so there these tests skip. The GPU part (fp16/bf16, CUDA graphs, pinned buffers) cannot
run here; bf16 on the CPU checks the half-precision dtype handling only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from harness_support import make_spec
from mlperf_harness import steps
from mlperf_harness.backends import backend_class, get_backend
from mlperf_harness.backends.base import Backend, TensorSpec
from mlperf_harness.benchmarks import get_benchmark
from mlperf_harness.benchmarks.base import Batch
from mlperf_harness.benchmarks.bert.model import build_model as build_bert
from mlperf_harness.benchmarks.bert.pipeline import dynamic_sequence
from mlperf_harness.benchmarks.dlrm import batching
from mlperf_harness.benchmarks.dlrm.model import build_model as build_dlrm
from mlperf_harness.benchmarks.dlrm.model import table_sizes
from mlperf_harness.benchmarks.rnnt.model import build_model as build_rnnt
from mlperf_harness.benchmarks.ssd_resnet34.model import build_model as build_ssd
from mlperf_harness.benchmarks.unet3d.model import build_model as build_unet3d
from mlperf_harness.errors import HarnessError
from mlperf_harness.workspace import Workspace
from onnx import TensorProto, helper

OK, WHY = backend_class("pytorch").available()
pytestmark = pytest.mark.skipif(not OK, reason=f"pytorch: {WHY} (CI has no torch)")

SEED = 3
Feeds = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each benchmark's small synthetic model (rnnt: its three parts), built once."""
    out = tmp_path_factory.mktemp("models")
    built = {
        "bert": build_bert(out / "bert" / "model.onnx", SEED, size="small"),
        "ssd-resnet34": build_ssd(out / "ssd" / "model.onnx", SEED, size="small"),
        "dlrm": build_dlrm(out / "dlrm" / "model.onnx", SEED, size="small"),
        "3d-unet": build_unet3d(out / "unet3d" / "model.onnx", SEED, size="small"),
    }
    return {**built, **{f"rnnt.{part}": path for part, path in build_rnnt(out / "rnnt", SEED, size="small").items()}}


def _feeds(name: str) -> Feeds:
    """Input batches of two (ssd's two images take its batched post-processing) with what each model's
    inputs mean: token ids with padding, rows per dlrm sample, utterances of different lengths (one
    empty, as in a warm-up)."""
    rng = np.random.default_rng(SEED)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    if name == "bert":
        seq = np.arange(384)
        return {
            "input_ids": rng.integers(0, 1024, (2, 384)),
            "input_mask": np.stack([seq < 300, seq < 120]).astype(np.int64),
            "segment_ids": np.stack([seq >= 40, seq >= 20]).astype(np.int64),
        }
    if name == "dlrm":
        rows = np.array(table_sizes("small"))
        samples = [
            {"dense_x": normal(r, 13), "indices": rng.integers(0, rows, (r, 26)).astype(np.int32)} for r in (3, 7)
        ]
        return batching.collate(samples)
    return {
        "ssd-resnet34": lambda: {"image": normal(2, 3, 400, 400)},
        "3d-unet": lambda: {"input": normal(2, 1, 32, 32, 32)},
        "rnnt.encoder": lambda: {"feature": normal(3, 30, 240), "feature_length": np.array([30, 17, 0])},
        "rnnt.prediction": lambda: {
            "symbol": np.array([[3], [28]]),
            "hidden": normal(2, 2, 64),
            "cell": normal(2, 2, 64),
        },
        "rnnt.joint": lambda: {"f": normal(2, 64), "g": normal(2, 64)},
    }[name]()


def _by_score(detections: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ssd's detections of each image in one order for equal scores too (score, label, box): ONNX's
    TopK keeps the lower index first among equals, CUDA's topk need not (seen on an H200: two
    equal-score detections swapped); the order among equal scores means nothing to the mAP."""
    boxes, labels, scores = detections["bboxes"], detections["labels"], detections["scores"]
    order = [np.lexsort((*boxes[i].T[::-1], labels[i], -scores[i])) for i in range(len(scores))]
    pick = lambda a: np.stack([a[i][o] for i, o in enumerate(order)])  # noqa: E731
    return {"bboxes": pick(boxes), "labels": pick(labels), "scores": pick(scores)}


def _pair(path: Path, precision: str = "fp32") -> tuple[Backend, Backend]:
    """onnxruntime and pytorch on one graph, pytorch asked for every output by name."""
    ort = get_backend("onnxruntime")
    ort.load(path, 2, "fp32")
    torch_backend = get_backend("pytorch")
    torch_backend.load(path, 2, precision, outputs=[s.name for s in ort.output_specs])
    return ort, torch_backend


@pytest.mark.parametrize(
    "name", ["bert", "ssd-resnet34", "dlrm", "3d-unet", "rnnt.encoder", "rnnt.prediction", "rnnt.joint"]
)
def test_outputs_equal_onnxruntimes(models: dict[str, Path], name: str) -> None:
    ort, pt = _pair(models[name])
    assert pt.input_specs == ort.input_specs and pt.output_specs == ort.output_specs
    feeds = _feeds(name)
    want, got = ort.predict(feeds), pt.predict(feeds)
    assert list(got) == list(want)
    if name == "ssd-resnet34":
        want, got = _by_score(want), _by_score(got)
    for out, w in want.items():
        assert got[out].dtype == w.dtype and got[out].shape == w.shape, out
        # Both fp32: only the kernels' summation order differs (measured: a few 1e-6 of the
        # largest value after the graphs' depth); a wrong op errs by O(1).
        scale = float(np.abs(w).max(initial=1.0))
        np.testing.assert_allclose(got[out], w, rtol=1e-4, atol=1e-4 * scale, err_msg=out)


@pytest.mark.parametrize("name", ["ssd-resnet34", "3d-unet"])
def test_conv_layout_answers_as_the_graph(models: dict[str, Path], name: str) -> None:
    """The GPU's layout rewrite (``conv_layout``: channels-last weights and inputs, ssd's conv + bias +
    ReLU fused; on the CPU the fused module runs conv, add and ReLU) changes no answer: checked here
    on the CPU in fp32 against onnxruntime, as the GPU applies it."""
    import torch
    from mlperf_harness.backends.torch_graph import convert
    from mlperf_harness.backends.torch_rewrites import conv_layout

    ort = get_backend("onnxruntime")
    ort.load(models[name], 2, "fp32")
    feeds = _feeds(name)
    want = ort.predict(feeds)
    proto = onnx.load(str(models[name]))
    model = convert(proto, [s.name for s in ort.output_specs], models[name]).eval()  # on the CPU, GPU or not
    fused, formats = conv_layout(model, ort.input_specs)
    assert fused > 0 if name == "ssd-resnet34" else fused == 0
    fmt = torch.channels_last if name == "ssd-resnet34" else torch.channels_last_3d
    assert formats == {ort.input_specs[0].name: fmt}
    [x] = feeds.values()
    with torch.inference_mode():
        outs = model(torch.from_numpy(x).contiguous(memory_format=fmt))
    got = {o.name: v.numpy() for o, v in zip(ort.output_specs, outs, strict=True)}
    if name == "ssd-resnet34":
        want, got = _by_score(want), _by_score(got)
    for out, w in want.items():
        scale = float(np.abs(w).max(initial=1.0))
        np.testing.assert_allclose(got[out], w, rtol=1e-4, atol=1e-4 * scale, err_msg=out)


def test_constant_gathers_select_as_the_graph(models: dict[str, Path]) -> None:
    """dlrm's per-table gathers at a constant index become selects with a Python int (no read-back
    on a GPU) and answer the same; bert's shape arithmetic is left to the host rewrite."""
    import torch
    from mlperf_harness.backends.torch_graph import convert
    from mlperf_harness.backends.torch_rewrites import constant_gathers

    def graph(name: str) -> Any:
        proto = onnx.load(str(models[name]))
        return convert(proto, [o.name for o in proto.graph.output], models[name]).eval()

    dlrm = graph("dlrm")
    feeds = [torch.from_numpy(a) for a in _feeds("dlrm").values()]
    with torch.inference_mode():
        want = dlrm(*feeds)
        assert constant_gathers(dlrm) == 26
        got = dlrm(*feeds)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert constant_gathers(graph("bert")) == 0


def test_only_the_outputs_asked_for_in_their_order(models: dict[str, Path]) -> None:
    pt = get_backend("pytorch")
    pt.load(models["ssd-resnet34"], 1, "fp32", outputs=["scores", "labels"])
    assert [s.name for s in pt.output_specs] == ["scores", "labels"]
    assert list(pt.predict(_feeds("ssd-resnet34"))) == ["scores", "labels"]
    with pytest.raises(HarnessError, match="has no output 'logits'"):
        get_backend("pytorch").load(models["bert"], 1, "fp32", outputs=["logits"])


def _rnnt_parts(models: dict[str, Path], backend: str, precision: str = "fp32") -> dict[str, Backend]:
    """rnnt's three parts loaded as the SUT loads them: a backend per part."""
    files = get_benchmark("rnnt").model_files(models["rnnt.encoder"].parent)
    loaded = {part: get_backend(backend) for part in files}
    for part, b in loaded.items():
        b.load(files[part], 2, precision)
    return loaded


def test_rnnt_three_parts_decode_as_onnxruntime(models: dict[str, Path]) -> None:
    """The three parts decoded by the benchmark's own ``infer`` (on a GPU: the device decoder): the
    same labels as onnxruntime's; and by the device decoder (on the CPU as on a GPU, bar the CUDA graph)."""
    import torch
    from mlperf_harness.benchmarks.rnnt.decoder import on_device
    from mlperf_harness.benchmarks.rnnt.device_decoder import decoder_for

    bench = get_benchmark("rnnt")
    rng = np.random.default_rng(SEED)
    samples = [
        {"feature": rng.standard_normal((t, 240)).astype(np.float32), "feature_length": np.array(t)} for t in (40, 23)
    ]
    batch = bench.collate(samples)
    torch_parts = _rnnt_parts(models, "pytorch")
    want, got = bench.infer(_rnnt_parts(models, "onnxruntime"), batch), bench.infer(torch_parts, batch)
    assert want["label_count"].sum() > 0  # something was decoded
    assert on_device(torch_parts) == torch.cuda.is_available()  # on the CPU, ``infer`` keeps the host loop
    assert decoder_for(torch_parts) is decoder_for(torch_parts)  # one per model instance: its graphs kept
    device = decoder_for(torch_parts).infer(torch_parts, batch)
    for out in (got, device):
        assert list(out) == list(want) and all(np.array_equal(out[k], want[k]) for k in want)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rnnt_device_decoder_gives_the_host_loops_labels(models: dict[str, Path], precision: str) -> None:
    """The device decoder's fixed-shape masked steps give ``greedy_decode``'s labels on utterances
    of different lengths, an empty one, and one whose frames all end at the 30-symbol cap; on a
    GPU, from a captured CUDA graph of the step, in fp16 too (the same fp16 values in both)."""
    import torch
    from mlperf_harness.benchmarks.rnnt.decoder import MAX_SYMBOLS_PER_STEP, greedy_decode
    from mlperf_harness.benchmarks.rnnt.device_decoder import DeviceDecoder

    if precision != "fp32" and not torch.cuda.is_available():
        pytest.skip("fp16 runs on a GPU only (the CPU runs fp32)")
    parts = _rnnt_parts(models, "pytorch", precision)
    rng = np.random.default_rng(SEED)
    encoded = rng.standard_normal((5, 12, 64)).astype(np.float32)
    encoded[1] *= 0.1  # few labels
    encoded[3] *= 10  # the joint's frame term outweighs g's: the blank never wins, every frame hits the cap
    lengths = np.array([12, 7, 0, 9, 3])

    def run(part: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return parts[part].predict(feeds)

    want = greedy_decode(run, encoded, lengths)
    assert want[2] == [] and len(want[3]) == MAX_SYMBOLS_PER_STEP * 9
    assert 0 < len(want[1]) < MAX_SYMBOLS_PER_STEP * 7
    decoder = DeviceDecoder(parts)
    labels, counts = decoder.decode(parts, torch.from_numpy(encoded).to(decoder.dev), torch.from_numpy(lengths))
    assert [labels[i, :n].tolist() for i, n in enumerate(counts.tolist())] == want
    assert decoder.captured == torch.cuda.is_available() and not decoder.eager_reason


def test_half_precision_dtypes_hold(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 as a GPU runs it, here on the CPU: int inputs stay int, the graphs' casts to float and
    non-max suppression do not mix dtypes, and the outputs come back as float32 near fp32's."""
    import torch
    from mlperf_harness.backends import torch_graph

    monkeypatch.setattr(torch_graph, "torch_device", lambda index, precision: (torch.device("cpu"), torch.bfloat16))
    for name in ("bert", "ssd-resnet34", "dlrm", "3d-unet", "rnnt.encoder", "rnnt.prediction", "rnnt.joint"):
        ort, pt = _pair(models[name], "bf16")
        feeds = _feeds(name)
        want, got = ort.predict(feeds), pt.predict(feeds)
        assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}, name
        if name == "ssd-resnet34":
            continue  # near-equal scores rank differently in bf16: the detections differ in order
        for out, w in want.items():
            # bf16 keeps 8 bits of mantissa: 2^-8 relative per op; 5e-2 over the graphs' depth.
            err = np.linalg.norm(got[out] - w) / max(float(np.linalg.norm(w)), 1e-9)
            assert err < 5e-2, (name, out, err)


def test_fused_attention_answers_as_the_graph(models: dict[str, Path]) -> None:
    """The GPU path's rewrite of BERT's attention into scaled_dot_product_attention, here on the
    CPU: it fires once per layer and answers as the unfused graph."""
    import torch
    from mlperf_harness.backends.torch_graph import convert
    from mlperf_harness.backends.torch_rewrites import Attention, fuse_attention

    path = models["bert"]
    outputs = ["output_start_logits", "output_end_logits"]
    plain, fused = (convert(onnx.load(str(path)), outputs, path).eval() for _ in range(2))
    assert fuse_attention(fused) == 2  # the small model's two layers
    softmaxes = [m for m in fused.modules() if isinstance(m, torch.nn.Softmax)]
    assert sum(isinstance(m, Attention) for m in fused.modules()) == 2 and not softmaxes
    feeds = [torch.from_numpy(a) for a in _feeds("bert").values()]  # two masks with padding
    with torch.inference_mode():
        want, got = plain(*feeds), fused(*feeds)
    for w, g in zip(want, got, strict=True):
        # fp32 both: the fused softmax sums in another order (measured ~1e-6 of the largest
        # logit); a wrong scale, mask or transpose moves the logits by O(1).
        scale = float(w.abs().max())
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-4 * scale)


def test_fused_dense_layers_answer_as_the_graph(models: dict[str, Path]) -> None:
    """The GPU path's rewrites of BERT's dense layers, here on the CPU: each MatMul + bias as one
    Linear (6 a layer and the QA head), each erf GELU as one gelu (1 a layer), the weights held once,
    and the same answers as the unfused graph (other exporters' GELUs: ``test_gelu_orders``)."""
    import torch
    from mlperf_harness.backends.torch_graph import convert
    from mlperf_harness.backends.torch_rewrites import fuse_attention, fuse_gelu, fuse_linear
    from onnx2torch.node_converters.activations import OnnxErf
    from onnx2torch.node_converters.matmul import OnnxMatMul

    path = models["bert"]
    outputs = ["output_start_logits", "output_end_logits"]
    plain, fused = (convert(onnx.load(str(path)), outputs, path).eval() for _ in range(2))
    weights = sum(t.numel() for t in plain.state_dict().values())
    assert fuse_attention(fused) == 2
    assert (fuse_linear(fused), fuse_gelu(fused)) == (2 * 6 + 1, 2)
    assert not any(isinstance(m, OnnxMatMul | OnnxErf) for m in fused.modules())
    assert sum(t.numel() for t in fused.state_dict().values()) <= weights  # no weight kept twice
    feeds = [torch.from_numpy(a) for a in _feeds("bert").values()]
    with torch.inference_mode():
        want, got = plain(*feeds), fused(*feeds)
    for w, g in zip(want, got, strict=True):
        # fp32 both: the fused bias and gelu round in another order (~1e-6 of the largest logit); a
        # dropped bias or a wrong GELU constant moves the logits by O(0.1) or more.
        scale = float(w.abs().max())
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["ssd-resnet34", "dlrm", "3d-unet", "rnnt.encoder", "rnnt.prediction", "rnnt.joint"])
def test_dense_rewrites_keep_the_other_graphs(models: dict[str, Path], name: str) -> None:
    """The dense rewrites run on every graph on a GPU: the other benchmarks' write their dense layers
    as ONNX Gemm (onnx2torch's Linear already) and have no erf GELU, so nothing matches and they
    answer as before."""
    import torch
    from mlperf_harness.backends.torch_graph import convert, output_names
    from mlperf_harness.backends.torch_rewrites import fuse_gelu, fuse_linear

    path = models[name]
    outputs = output_names(path)
    plain, fused = (convert(onnx.load(str(path)), outputs, path).eval() for _ in range(2))
    assert (fuse_linear(fused), fuse_gelu(fused)) == (0, 0)
    feeds = [torch.from_numpy(np.asarray(a)) for a in _feeds(name).values()]
    with torch.inference_mode():
        want, got = plain(*feeds), fused(*feeds)
    for w, g in zip(want, got, strict=True):
        if name == "ssd-resnet34":
            continue  # detections: the same boxes may come in another order; the backbone is convolutions
        scale = float(w.abs().max()) if w.numel() and w.is_floating_point() else 1.0
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("constants", ["initializers", "Constant nodes"])
@pytest.mark.parametrize("order", ["div, x then half", "x half first", "mul, half then x"])
def test_gelu_orders(order: str, constants: str, tmp_path: Path) -> None:
    """GELU as exporters write it: TensorFlow/HF (Div by sqrt 2, then * x, then * 0.5), (x * 0.5) *
    (1 + erf), and the synthetic builder's, its scalars as initializers or as Constant nodes (as
    PyTorch's exporter writes them); one gelu each, the same values; a wrong constant is left."""
    import torch
    from mlperf_harness.backends.torch_graph import convert
    from mlperf_harness.backends.torch_rewrites import fuse_gelu
    from onnx import TensorProto, helper, numpy_helper

    def c(name: str, v: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(v, np.float32), name)

    tail = {
        "div, x then half": [
            ("Div", ["x", "sqrt2"], "s"),
            ("Erf", ["s"], "e"),
            ("Add", ["e", "one"], "a"),
            ("Mul", ["x", "a"], "m"),
            ("Mul", ["m", "half"], "y"),
        ],
        "x half first": [
            ("Div", ["x", "sqrt2"], "s"),
            ("Erf", ["s"], "e"),
            ("Add", ["one", "e"], "a"),
            ("Mul", ["x", "half"], "xh"),
            ("Mul", ["xh", "a"], "y"),
        ],
        "mul, half then x": [
            ("Mul", ["x", "rsqrt2"], "s"),
            ("Erf", ["s"], "e"),
            ("Add", ["e", "one"], "a"),
            ("Mul", ["a", "half"], "h"),
            ("Mul", ["x", "h"], "y"),
        ],
    }[order]
    consts = [c("sqrt2", 2**0.5), c("rsqrt2", 2**-0.5), c("one", 1.0), c("half", 0.5), c("wrong", 0.6)]
    for half, fires in (("half", 1), ("wrong", 0)):
        nodes = [helper.make_node(op, [half if i == "half" else i for i in ins], [out]) for op, ins, out in tail]
        inits = consts
        if constants == "Constant nodes":
            nodes = [helper.make_node("Constant", [], [k.name], value=k) for k in consts] + nodes
            inits = []
        graph = helper.make_graph(
            nodes,
            "gelu",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
            inits,
        )
        path = tmp_path / f"gelu-{half}-{constants[0]}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        plain, fused = (convert(onnx.load(str(path)), ["y"], path).eval() for _ in range(2))
        assert fuse_gelu(fused) == fires, (order, half)
        x = torch.linspace(-4, 4, 32).reshape(4, 8)
        with torch.inference_mode():
            (want,), (got,) = plain(x), fused(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_shape_arithmetic_goes_to_the_host(models: dict[str, Path]) -> None:
    """What the GPU path keeps on the host (onnx2torch reads it back as Python values): bert's
    Shape -> Gather of the sequence length and its integer constants (reshapes, axes, the split),
    rnnt's slice bounds and axes; never a float tensor. The graph answers the same after."""
    import torch
    from mlperf_harness.backends.torch_graph import convert
    from mlperf_harness.backends.torch_rewrites import HostShape, host_shape_arithmetic, host_values

    def graph(name: str) -> Any:
        path = models[name]
        proto = onnx.load(str(path))
        return convert(proto, [o.name for o in proto.graph.output], path).eval()

    def ints(model: Any, nodes: set[Any]) -> bool:
        return all(not model.get_buffer(str(n.target)).is_floating_point() for n in nodes)

    bert, prediction = graph("bert"), graph("rnnt.prediction")
    host = host_values(bert)
    assert {str(n.target) for n in host if n.op == "call_module"} == {"emb/shape", "emb/seq"}
    assert ints(bert, {n for n in host if n.op == "get_attr"})
    host = host_values(prediction)
    assert host and all(n.op == "get_attr" for n in host) and ints(prediction, host)
    feeds = [torch.from_numpy(a) for a in _feeds("bert").values()]
    with torch.inference_mode():
        want = bert(*feeds)
        assert host_shape_arithmetic(bert) == 16 and any(isinstance(m, HostShape) for m in bert.modules())
        got = bert(*feeds)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def _onnx(path: Path, node: onnx.NodeProto, ins: list[Any], outs: list[Any], opset: int = 17) -> Path:
    graph = helper.make_graph([node], "g", ins, outs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_an_op_without_converter_names_the_op_and_the_file(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    path = _onnx(tmp_path / "det.onnx", helper.make_node("Det", ["x"], ["y"]), [x], [y])
    with pytest.raises(HarnessError, match=r"det\.onnx: onnx2torch cannot convert Det; use backend onnxruntime"):
        get_backend("pytorch").load(path, 1, "fp32")


def test_image_graphs_keep_the_image_path(tmp_path: Path) -> None:
    """One float NCHW input and one output wanted: the image path (resnet50's); anything else:
    the general path."""
    from mlperf_harness.backends.torch_graph import fits_image_path

    def model(name: str, elem: int, rank: int, outputs: int) -> Path:
        x = helper.make_tensor_value_info("x", elem, ["n", 3, 8, 8][:rank])
        ys = [helper.make_tensor_value_info(f"y{i}", elem, ["n", 3, 8, 8][:rank]) for i in range(outputs)]
        node = helper.make_node("Split", ["x"], [y.name for y in ys], axis=0) if outputs > 1 else None
        return _onnx(tmp_path / name, node or helper.make_node("Identity", ["x"], ["y0"]), [x], ys)

    image, two = model("image.onnx", TensorProto.FLOAT, 4, 1), model("two.onnx", TensorProto.FLOAT, 4, 2)
    assert fits_image_path(image, ()) and fits_image_path(two, ["y1"])
    assert not fits_image_path(two, ()) and not fits_image_path(two, ["y0", "y1"])
    assert not fits_image_path(model("ids.onnx", TensorProto.INT64, 4, 1), ())
    assert not fits_image_path(model("flat.onnx", TensorProto.FLOAT, 2, 1), ())
    general = get_backend("pytorch")
    general.load(two, 1, "fp32")
    assert [s.name for s in general.output_specs] == ["y0", "y1"]


def test_bert_runs_through_the_sut_and_scores_100(tmp_path: Path) -> None:
    """bert small, Offline, AccuracyOnly, ``backend: pytorch`` on the CPU: the SUT's stacked int32
    samples, cast to the graph's int64 by the benchmark, F1 100 % against the FP32 model's answers."""
    bert = {
        "benchmark": "bert",
        "backend": "pytorch",
        "dataset": {"synthetic": {"samples": 6, "seed": SEED}},
        "model": {"synthetic": {"seed": SEED}},
        "audits": [],
        "batchSize": 4,
        "loadgen": {"minDurationMs": 100, "minQueryCount": 4, "expectedQps": 20},
    }
    ws = Workspace(make_spec(**bert), tmp_path, "pytorch", quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess):
        assert step(ws).ok
    assert steps.build_engine(ws, "Offline").ok
    [acc] = steps.run_harness(ws, "Offline", "AccuracyOnly").results
    assert acc.backend.startswith("pytorch") and acc.accuracyMetric == "F1"
    assert acc.accuracy == 100.0 and acc.accuracyPassed


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_bert_trimmed_batches_answer_as_384(
    models: dict[str, Path], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bert's ``infer`` cuts a batch to its longest real sequence rounded up to 64 (the small model's
    sequence axis is dynamic): the responses equal the full 384-token batch's, every padded token's
    logits -10000 in both; a model fixed at 384 gets the full batch."""
    bench = get_benchmark("bert")
    model = get_backend(backend)
    model.load(models["bert"], 4, "fp32", outputs=[s.name for s in bench.outputs])
    seq, lengths = np.arange(384), [50, 20, 130]  # the longest 130: 192 tokens
    rng = np.random.default_rng(SEED)
    feeds = {  # as the SUT gathers them: int32 (batch, 384)
        "input_ids": rng.integers(1, 1024, (3, 384)).astype(np.int32),
        "input_mask": np.stack([seq < n for n in lengths]).astype(np.int32),
        "segment_ids": np.stack([seq >= n // 2 for n in lengths]).astype(np.int32),
    }
    widths: list[int] = []
    run = model.predict

    def trimmed_run(batch: Feeds) -> Feeds:
        widths.append(batch["input_ids"].shape[1])
        return run(batch)

    def full_run(batch: Feeds) -> Feeds:  # the same batch padded back to 384 tokens
        return run({k: np.pad(v, ((0, 0), (0, 384 - v.shape[1]))) for k, v in batch.items()})

    answers = []
    for predict in (trimmed_run, full_run):
        monkeypatch.setattr(model, "predict", predict)
        answers.append(bench.responses(bench.infer({"model": model}, feeds), Batch(np.arange(3))))
    trimmed, full = answers
    assert widths == [192] and trimmed.shape == full.shape == (3, 384, 2)
    pads = feeds["input_mask"] == 0
    assert (trimmed[pads] == -10000).all() and (full[pads] == -10000).all()
    # fp32 both: the real tokens' logits move by the kernels' summation order only (a few 1e-6).
    np.testing.assert_allclose(trimmed, full, rtol=1e-4, atol=1e-4 * float(np.abs(full[~pads]).max()))
    fixed = [TensorSpec(s.name, (384,), "int64") for s in model.input_specs]
    assert dynamic_sequence(model.input_specs) and not dynamic_sequence(fixed)


def _fake_capture(backend: Any, fail: bool = False) -> list[Any]:
    """Replace the backend's CUDA capture (GPU only) by a record of the signatures it was asked for."""
    asked: list[Any] = []

    def capture(key: Any) -> Any:
        asked.append(key)
        if fail:
            backend.eager_reason = "waits for the GPU"
            return None
        return (f"graph {len(asked)}", [], ())

    backend._capture = capture
    backend.graphed = True  # as load decides on a GPU
    return asked


def test_a_cuda_graph_per_input_shape_signature(models: dict[str, Path]) -> None:
    """The general path's graph bookkeeping (the capture itself needs a GPU: untested here): one
    graph per signature (batch bucket x the dynamic dimensions' sizes), reused; past ``max_graphs``
    a new shape runs eagerly, the graphs kept; a model that cannot be captured runs eagerly."""
    from mlperf_harness.backends.torch_graph import TorchGraphBackend, signature

    pt = TorchGraphBackend()
    pt.load(models["bert"], 8, "fp32")
    asked = _fake_capture(pt)
    batch = [np.zeros((3, 192), np.int64)] * 3
    assert signature(batch, 4) == ((4, 192),) * 3
    first = pt._graph_for(signature(batch, 4))
    assert pt._graph_for(signature(batch, 4)) is first and asked == [((4, 192),) * 3]
    assert pt._graph_for(((4, 64),) * 3) is not first and len(asked) == 2
    pt.max_graphs = 3
    assert pt._graph_for(((8, 64),) * 3) is not None
    assert pt._graph_for(((8, 128),) * 3) is None and pt._graph_for(((8, 384),) * 3) is None
    assert pt.eager_shapes == 2 and pt.graphed and len(pt._graphs) == 3
    assert pt._graph_for(signature(batch, 4)) is first  # the graphs taken stay
    failing = TorchGraphBackend()
    failing.load(models["bert"], 8, "fp32")
    _fake_capture(failing, fail=True)
    assert failing._graph_for(((1, 64),) * 3) is None and not failing.graphed
    assert failing.eager_reason == "waits for the GPU"


@pytest.mark.parametrize("name", ["bert", "rnnt.joint"])
def test_warmup_captures_the_batch_buckets_of_fixed_shapes_only(models: dict[str, Path], name: str) -> None:
    """Warm-up captures every batch bucket of a model of fixed shapes (rnnt's joint), and only the
    warm-up batch's own bucket of one whose other dimensions vary (bert's sequence): its batches'
    shapes are captured at their first batch."""
    from mlperf_harness.backends.torch_graph import TorchGraphBackend

    pt = TorchGraphBackend()
    pt.load(models[name], 8, "fp32")
    asked = _fake_capture(pt)
    pt.warmup({s.name: s.zeros(2) for s in pt.input_specs})
    assert [key[0][0] for key in asked] == ([2] if name == "bert" else [1, 2, 4, 8])


def test_graphs_need_every_input_to_lead_with_the_batch(models: dict[str, Path]) -> None:
    """dlrm's (26, rows) offsets cannot be padded to a batch bucket: no CUDA graphs, said why."""
    from mlperf_harness.backends.torch_graph import batch_axis_reason, graph_inputs

    def reason(name: str) -> str:
        return batch_axis_reason(graph_inputs(onnx.load(str(models[name]), load_external_data=False).graph))

    assert reason("dlrm").endswith("first dimension is 26, not the batch")
    assert reason("bert") == reason("rnnt.encoder") == reason("ssd-resnet34") == ""


def test_a_graph_of_batch_1_is_captured_at_batch_1(tmp_path: Path) -> None:
    """A graph whose input's first dimension is 1 (the official ssd-resnet34's) with ragged outputs:
    CUDA graphs still (its calls have one row, never padded), warmed up at batch 1 only."""
    from mlperf_harness.backends.torch_graph import TorchGraphBackend, batch_axis_reason, graph_inputs

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [3, "n"])
    path = _onnx(tmp_path / "one.onnx", helper.make_node("NonZero", ["x"], ["y"]), [x], [y])
    assert batch_axis_reason(graph_inputs(onnx.load(str(path)).graph)) == ""
    pt = TorchGraphBackend()
    pt.load(path, 8, "fp32")
    asked = _fake_capture(pt)
    pt.warmup({"x": np.ones((1, 3, 4), np.float32)})
    assert asked == [((1, 3, 4),)]


def _nms_case(images: int = 3, classes: int = 4, boxes: int = 40) -> dict[str, np.ndarray]:
    """Boxes and scores for NonMaxSuppression: overlapping boxes, some as (x2, y2, x1, y1) (ONNX
    takes any two opposite corners), equal scores within a class (ties), an image with no score over
    the threshold, and one whose class 1 has a single box over it."""
    rng = np.random.default_rng(SEED)
    corners = rng.uniform(0, 0.7, (images, boxes, 2)).astype(np.float32)
    far = corners + rng.uniform(0.1, 0.3, (images, boxes, 2)).astype(np.float32)
    coords = np.concatenate([corners, far], axis=2)
    coords[:, ::5] = np.concatenate([far, corners], axis=2)[:, ::5]  # flipped corners
    scores = rng.uniform(0, 1, (images, classes, boxes)).astype(np.float32)
    scores[0, 0, 10:20] = 0.75  # ties
    scores[0, 2, ::3] = scores[0, 2, 0]
    scores[1] = rng.uniform(0, 0.2, (classes, boxes))  # nothing over the threshold
    scores[2, 1] = 0.1
    scores[2, 1, 7] = 0.9
    return {"boxes": coords, "scores": scores}


def _onnx_nms(limits: dict[str, np.ndarray], constant: bool) -> onnx.ModelProto:
    """ONNX NonMaxSuppression on fed boxes and scores, its limits fed or initializers."""
    fed = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", "b", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", "c", "b"]),
    ]
    if constant:
        inits = [onnx.numpy_helper.from_array(v, k) for k, v in limits.items()]
    else:
        inits = []
        fed += [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), [1]) for k, v in limits.items()
        ]
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", *limits], ["selected"])],
        "nms",
        fed,
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        inits,
    )
    # IR 10: the device image's onnx writes a newer IR version than its onnxruntime reads.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=10)


@pytest.mark.parametrize("most", [1, 4, 100])
def test_batched_nms_selects_as_onnxruntime(most: int, tmp_path: Path) -> None:
    """OnnxNMS (one NMS over every image and class) against onnxruntime's NonMaxSuppression on 3
    images of 4 classes: overlapping and flipped boxes, ties, an image with nothing over the
    threshold, a per-class cap that cuts (1, 4) or not (100): the same rows in the same order, with
    the limits fed (read at each call) or constants (read once at conversion: ``nms_limits``)."""
    import onnxruntime
    import torch
    from mlperf_harness.backends.torch_graph import convert
    from mlperf_harness.backends.torch_ops import OnnxNMS

    case = _nms_case()
    limits = {
        "most": np.array([most], np.int64),
        "iou": np.array([0.4], np.float32),
        "floor": np.array([0.2], np.float32),
    }
    fed = _onnx_nms(limits, constant=False)
    session = onnxruntime.InferenceSession(fed.SerializeToString(), providers=["CPUExecutionProvider"])
    [want] = session.run(None, {**case, **limits})
    assert 0 < len(want) < 3 * 4 * 40 and not (want[:, 0] == 1).any() and (want[:, 0] == 2).any()
    assert (most > 4 or len(want[want[:, 0] == 0]) == 4 * most) and ((want[:, :2] == [2, 1]).all(1).sum() == 1)
    feeds = [torch.from_numpy(a) for a in (*case.values(), *limits.values())]
    np.testing.assert_array_equal(OnnxNMS()(*feeds).numpy(), want)
    image = (torch.from_numpy(case["scores"]) > 0.2).nonzero(as_tuple=True)[0]
    for chunk in (1, 100):  # fewer candidates a call than there are: images in chunks of whole images
        nms = OnnxNMS()
        nms.chunk = chunk
        assert len(nms._chunks(image, 3)) == 2  # image 1 has no candidate
        np.testing.assert_array_equal(nms(*feeds).numpy(), want)
    path = tmp_path / "nms.onnx"
    onnx.save(_onnx_nms(limits, constant=True), str(path))
    model = convert(onnx.load(str(path)), ["selected"], path)
    [nms] = [m for m in model.modules() if isinstance(m, OnnxNMS)]
    assert nms.limits == (most, pytest.approx(0.4), pytest.approx(0.2))
    [got] = model(*(torch.from_numpy(a) for a in case.values()))
    np.testing.assert_array_equal(got.numpy(), want)
    assert OnnxNMS((0, 0.5, 0.0))(*(torch.from_numpy(a) for a in case.values())).shape == (0, 3)


def _ssd_graph(models: dict[str, Path]) -> Any:
    from mlperf_harness.backends.torch_graph import convert

    path = models["ssd-resnet34"]
    return convert(onnx.load(str(path)), ["bboxes", "labels", "scores"], path).eval()


def test_split_graph_answers_as_the_whole(models: dict[str, Path]) -> None:
    """The split capture's parts on the CPU (the capture itself needs a GPU: untested here): ssd's
    first wait is its NMS (``first_wait`` with the CPU's stand-in for torch's sync debug mode); the
    prefix before it and the suffix on the prefix's outputs answer exactly as the whole graph, and
    as onnxruntime; on a batch padded to its bucket, the prefix's batch-led outputs cut to the real
    rows (``batch_rows``) give the unpadded batch's answers."""
    import torch
    from mlperf_harness.backends.torch_ops import OnnxNMS
    from mlperf_harness.backends.torch_split import batch_rows, first_wait, split_at

    model = _ssd_graph(models)
    feeds = _feeds("ssd-resnet34")
    x = torch.from_numpy(feeds["image"])
    with torch.inference_mode():
        at, why = first_wait(model, [x])
        [nms] = [
            n for n in model.graph.nodes if n.op == "call_module" and isinstance(model.get_submodule(n.target), OnnxNMS)
        ]
        assert at == nms.name and "would wait for the GPU" in why
        split = split_at(model, at)
        assert split is not None and split.ops[0] > 50 and 0 < split.ops[1] < 60
        assert split.describe().startswith(f"CUDA graph up to {at} (")
        assert first_wait(split.prefix, [x]) == ("", "")
        carried = split.prefix(x)
        assert len(carried) == 2  # the decoded boxes and the class scores
        whole, parts = model(x), split.suffix(*carried)
        assert all(torch.equal(w, p) for w, p in zip(whole, parts, strict=True))
        padded = torch.cat([x, torch.zeros_like(x[:2])])  # 2 images in a bucket of 4
        rows = batch_rows(split.prefix, [padded])
        assert rows == (True, True)
        cut = split.suffix(*(o[:2] if r else o for o, r in zip(split.prefix(padded), rows, strict=True)))
    ort = get_backend("onnxruntime")
    ort.load(models["ssd-resnet34"], 2, "fp32")
    want = _by_score(ort.predict(feeds))
    for got in (parts, cut):
        got = _by_score({k: v.numpy() for k, v in zip(want, got, strict=True)})
        for out, w in want.items():
            scale = float(np.abs(w).max(initial=1.0))
            np.testing.assert_allclose(got[out], w, rtol=1e-4, atol=1e-4 * scale, err_msg=out)
    assert split_at(model, next(iter(model.graph.nodes)).name) is None  # nothing before the wait


def test_split_needs_a_padded_batch_to_change_nothing_else() -> None:
    """``batch_rows`` on a prefix whose outputs lead with the batch, stay the same, or depend on the
    batch size otherwise (a sum over the batch): the last would change with padding."""
    import torch
    from mlperf_harness.backends.torch_split import batch_rows

    x = torch.ones(4, 3)
    assert batch_rows(lambda x: (x * 2, torch.tensor(3), 5), [x]) == (True, False, False)
    assert batch_rows(lambda x: (x * 2, x.sum(0)), [x]) == (True, None)


def test_waits_per_batch_of_ssds_graph(models: dict[str, Path]) -> None:
    """What a call of ssd's graph would wait for on a GPU, counted on the CPU with the GPU's host
    rewrites (``count_waits``): the same for 1 and 4 images (the NMS is one call for the batch), a
    handful in all, none in the prefix the split captures."""
    import torch
    from mlperf_harness.backends.torch_ops import OnnxNMS
    from mlperf_harness.backends.torch_rewrites import constant_gathers, host_shape_arithmetic
    from mlperf_harness.backends.torch_split import count_waits, split_at

    model = _ssd_graph(models)
    constant_gathers(model)
    host_shape_arithmetic(model)  # as on a GPU
    x = torch.from_numpy(_feeds("ssd-resnet34")["image"])
    one, four = (count_waits(model, [torch.cat([x] * k)[: 2 * k - 1 if k > 1 else 1]]) for k in (1, 4))
    assert one == four and 5 <= sum(one.values()) <= 12, one
    [nms] = [
        n.name
        for n in model.graph.nodes
        if n.op == "call_module" and isinstance(model.get_submodule(n.target), OnnxNMS)
    ]
    assert one[nms] == 3  # the boxes over the threshold, NMS's count, the per-class cap
    split = split_at(model, nms)
    assert split is not None and count_waits(split.prefix, [x]) == {}


def test_a_batch_1_graph_that_waits_is_split_without_other_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph of batch 1 (the official ssd-resnet34's inputs are [1, ...]) may hold batch-1
    constants before its first wait (a Reshape to [1, 12]): its split never runs the prefix on
    two rows; a prefix that fails on two rows of another graph means batches are not padded."""
    import torch
    from mlperf_harness.backends.torch_graph import TorchGraphBackend

    nodes = [
        helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["a"]),
        helper.make_node("Abs", ["a"], ["b"]), helper.make_node("Reshape", ["b", "shape"], ["c"]),
        helper.make_node("NonZero", ["c"], ["y"]),
    ]  # fmt: skip
    _cpu(monkeypatch)
    shape = onnx.numpy_helper.from_array(np.array([1, 12], np.int64), "shape")
    for batch in (1, "N"):
        graph = helper.make_graph(
            nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4])],
            [helper.make_tensor_value_info("y", TensorProto.INT64, [2, "n"])], [shape],
        )  # fmt: skip
        path = tmp_path / f"one-{batch}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
        pt = TorchGraphBackend()
        pt.load(path, 1, "fp32")
        with torch.inference_mode():
            pt._check_waits([torch.ones(1, 3, 4)])
        assert pt.split is not None and "nonzero" in pt.eager_reason.lower(), pt.eager_reason
        assert pt._pad == (batch == 1) and not any(pt._rows), (batch, pt._rows)


def test_the_backend_splits_where_a_call_waits(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend's check at its first capture, here on the CPU (what would wait on a GPU): ssd is
    cut at its NMS, both prefix outputs lead with the batch (padded batches stay padded), and
    ``eager_reason`` says what is graphed and what is not; with ``MLPERF_TORCH_SPLIT=0`` it runs
    eagerly for the wait's reason, as before the split; bert does not wait."""
    import torch
    from mlperf_harness.backends.torch_graph import TorchGraphBackend

    _cpu(monkeypatch)
    x = torch.from_numpy(_feeds("ssd-resnet34")["image"])
    pt = TorchGraphBackend()
    pt.load(models["ssd-resnet34"], 4, "fp32")
    with torch.inference_mode():
        pt._check_waits([x])
    assert pt.split is not None and pt._rows == (True, True) and pt._pad
    assert (
        pt.eager_reason.startswith(f"CUDA graph up to {pt.split.at} (") and "would wait for the GPU" in pt.eager_reason
    )
    monkeypatch.setenv("MLPERF_TORCH_SPLIT", "0")
    whole = TorchGraphBackend()
    whole.load(models["ssd-resnet34"], 4, "fp32")
    with torch.inference_mode():
        whole._check_waits([x])
    assert whole.split is None and whole.eager_reason.endswith("would wait for the GPU")
    bert = TorchGraphBackend()
    bert.load(models["bert"], 4, "fp32")
    with torch.inference_mode():
        bert._check_waits([torch.from_numpy(a) for a in _feeds("bert").values()])
    assert bert.split is None and not bert.eager_reason


def test_an_early_wait_leaves_the_graph_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph whose first wait comes after fewer ops than follow it (1 before, 4 from it on) is not
    split: its captures, one per shape, would cost more than the prefix saves."""
    import torch
    from mlperf_harness.backends.torch_graph import TorchGraphBackend

    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("NonZero", ["r"], ["nz"]),
        helper.make_node("Transpose", ["nz"], ["t"]),
        helper.make_node("Neg", ["t"], ["n"]),
        helper.make_node("Abs", ["n"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "early",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["k", 2])],
    )
    path = tmp_path / "early.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    _cpu(monkeypatch)
    pt = TorchGraphBackend()
    pt.load(path, 2, "fp32")
    with torch.inference_mode():
        pt._check_waits([torch.ones(2, 4)])
    assert pt.split is None and pt.eager_reason.endswith("would wait for the GPU (after 1 of 5 ops)")


def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backends the test makes load on the CPU even where a GPU is visible: what it checks is
    the CPU's (on a GPU machine they would otherwise load on cuda:0)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _gpu() -> Any:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    return torch


def _host_waits(run: Any) -> int:
    """How many times ``run()`` waits for the GPU (torch's sync debug mode, warning at each wait)."""
    import warnings

    torch = _gpu()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen)


def _detections(out: dict[str, np.ndarray], image: int) -> np.ndarray:
    """One image's detections (score > 0: the rest pads the batch) as rows of score, label, box,
    ordered by score, label and box (the order among equal scores means nothing to the mAP)."""
    keep = out["scores"][image] > 0
    rows = np.column_stack([out["scores"][image][keep], out["labels"][image][keep], out["bboxes"][image][keep]])
    return rows[np.lexsort((*rows[:, 2:].T[::-1], rows[:, 1], -rows[:, 0]))]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_split_capture_answers_as_eager_on_a_gpu(models: dict[str, Path], precision: str) -> None:
    """GPU only (passed on an H100, 2026-12-05): ssd's prefix captured in CUDA graphs and
    its NMS and the rest run eagerly give each image the detections of the whole graph run eagerly
    on the same 4 images, for a full batch and a padded one (3 images in the bucket of 4); the host
    waits a batch, split against eager, printed for the record (the CPU's estimate:
    ``test_waits_per_batch_of_ssds_graph``)."""
    from mlperf_harness.backends.torch_graph import TorchGraphBackend

    _gpu()
    rng = np.random.default_rng(SEED)
    split, eager = TorchGraphBackend(), TorchGraphBackend(use_graphs=False)
    for b in (split, eager):
        b.load(models["ssd-resnet34"], 4, precision)
    images = rng.standard_normal((4, 3, 400, 400)).astype(np.float32)
    split.warmup({"image": images})
    print(f"pytorch {precision}: {split.eager_reason}")  # where the GPU's first wait cut the graph
    assert split.graphed and split.split is not None and len(split._graphs) == 3  # buckets 1, 2, 4
    padded = images.copy()
    padded[3] = 0  # as the backend pads a batch of 3 to its bucket
    for n, whole in ((4, images), (3, padded)):
        want, got = eager.predict({"image": whole}), split.predict({"image": images[:n]})
        for i in range(n):
            w, g = _detections(want, i), _detections(got, i)
            assert len(w) and g.shape == w.shape, (n, i)
            # The same kernels on the same shapes (the eager batch is the graph's, padding and all).
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"{n} images, image {i}")
        feeds = {"image": images[:n]}
        pair = (("split", split), ("eager", eager))
        waits = {name: _host_waits(lambda b=b, f=feeds: b.predict(f)) for name, b in pair}
        print(f"{n} images: host waits a batch {waits}")
        assert waits["split"] <= waits["eager"]


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_staged_samples_answer_as_host_batches(
    models: dict[str, Path], device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_from_device on the general path (the GPU half written without one): ssd's images staged
    once, a batch picked by its rows there, gives each image the detections of the same images
    handed over as a host batch, for a full batch and a short one (on a GPU: replayed graphs, the
    short one padded in its bucket); graphs whose inputs vary in shape keep no samples."""
    from mlperf_harness.backends.torch_graph import TorchGraphBackend

    if device == "gpu":
        _gpu()
    else:
        _cpu(monkeypatch)
    rng = np.random.default_rng(SEED)
    b = TorchGraphBackend()
    b.load(models["ssd-resnet34"], 4, "fp32")
    images = rng.standard_normal((6, 3, 400, 400)).astype(np.float32)
    b.warmup({"image": images[:4]})
    assert b.graphed == (device == "gpu")
    assert b.reserve_samples(8) and b.resident
    b.stage_samples({"image": images})
    graphs = dict(b._graphs)
    for rows in ([5, 0, 2, 3], [4, 1, 5]):
        got, want = b.predict_rows(np.array(rows)), b.predict({"image": images[rows]})
        assert sorted(got) == sorted(want) and len(got["scores"]) == len(rows)
        for i in range(len(rows)):
            w, g = _detections(want, i), _detections(got, i)
            assert len(w) and g.shape == w.shape, (rows, i)
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=f"rows {rows}, image {i}")
    # The staged rows replay the graphs the warm-up captured (on a GPU: 3), none captured anew.
    assert b._graphs.keys() == graphs.keys() and all(b._graphs[k] is g for k, g in graphs.items())
    with pytest.raises(RuntimeError, match="9 samples loaded, 8 reserved"):
        b.stage_samples({"image": np.zeros((9, 3, 400, 400), np.float32)})
    for ragged in ("rnnt.encoder", "dlrm"):
        other = TorchGraphBackend()
        other.load(models[ragged], 4, "fp32")
        assert not other.reserve_samples(8) and not other.resident, ragged


def test_instances_of_a_model_share_it(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Instances that load one file on one device in one dtype share its converted model (dlrm's
    tables once, not per instance) and answer alike; another dtype (bf16 as a GPU runs it, here on
    the CPU) is a model of its own; the model goes with its last instance."""
    import gc
    import weakref

    import torch
    from mlperf_harness.backends import torch_graph

    cpu = torch.device("cpu")
    monkeypatch.setattr(
        torch_graph, "torch_device", lambda i, p: (cpu, torch.bfloat16 if p == "bf16" else torch.float32)
    )
    path = models["dlrm"]
    a, b, half = (torch_graph.TorchGraphBackend() for _ in range(3))
    for backend, precision in ((a, "fp32"), (b, "fp32"), (half, "bf16")):
        backend.load(path, 4, precision)
    assert a._model is b._model and half._model is not a._model
    feeds = _feeds("dlrm")
    want = a.predict(feeds)
    assert all(np.array_equal(b.predict(feeds)[k], v) for k, v in want.items())

    def held() -> list[str]:
        return sorted(key[5] for key in torch_graph._PREPARED if key[0] == path.resolve())

    assert held() == ["torch.bfloat16", "torch.float32"]
    gc.disable()  # the last close frees the model itself: not left to the collector's next pass
    try:
        a.close()
        assert held() == ["torch.bfloat16", "torch.float32"] and b.predict(feeds).keys() == want.keys()
        model = weakref.ref(b._model)
        b.close()
        half.close()
        # An fx module and its graph refer to each other: without a collection at the last close, a
        # GPU kept the weights (on an H100, dlrm's plain loop's 44.8 GiB of tables beside the harness's).
        assert held() == [] and model() is None
    finally:
        gc.enable()


def test_ssd_runs_from_staged_samples_through_the_sut(tmp_path: Path) -> None:
    """ssd small, ``backend: pytorch`` on the CPU, AccuracyOnly, two instances (one model): with
    start_from_device the runner stages the loaded images once an instance and the SUT hands the
    backends rows, and every image's answer is the bytes of the run that hands them host batches."""
    from harness_support import answers, run_direct

    spec = make_spec(
        benchmark="ssd-resnet34",
        suite="v1.0",
        backend="pytorch",
        dataset={"synthetic": {"samples": 6, "seed": SEED}},
        model={"synthetic": {"seed": SEED}},
        audits=[],
        batchSize=4,
        instancesPerDevice=2,
    )
    ws = Workspace(spec, tmp_path, "pytorch", quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess):
        assert step(ws).ok
    assert not ws.samples().ragged  # one image size: read as a fixed tensor
    made: list[Backend] = []

    def factory() -> Backend:
        made.append(get_backend("pytorch"))
        return made[-1]

    staged = run_direct(ws, "Offline", "AccuracyOnly", factory, startFromDevice=True)
    assert not staged.errors and staged.completed == 6 and all(b.resident for b in made)
    assert len(made) == 2 and made[0]._general._model is made[1]._general._model  # type: ignore[attr-defined]
    staged_answers = answers(staged.log_dir)
    made.clear()
    host = run_direct(ws, "Offline", "AccuracyOnly", factory, startFromDevice=False)
    assert not host.errors and not any(b.resident for b in made)
    assert answers(host.log_dir) == staged_answers and len(staged_answers) == 6


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_unet3d_windows_on_the_device_label_as_the_host(
    models: dict[str, Path], device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3d-unet's sliding window on the backend's device (``device_window``: the case copied once, its
    patches, weighted sums, summed weights and argmax there) labels a case as
    the host path over the same backend's ``predict``: every voxel on the CPU (the same logits, the
    same float32 steps); on a GPU in fp16 (the host path replays CUDA graphs, the device path calls
    the model eagerly) all but a few in 10,000. ``segmenter`` picks it on a GPU only."""
    from mlperf_harness.benchmarks.unet3d import device_window, kits19, sliding_window
    from mlperf_harness.benchmarks.unet3d.model import patch_size

    if device == "gpu":
        _gpu()
    else:
        _cpu(monkeypatch)
    backend = get_backend("pytorch")
    backend.load(models["3d-unet"], 4, "fp32" if device == "cpu" else "fp16", outputs=["output"])
    patch = patch_size(models["3d-unet"])
    rng = np.random.default_rng(SEED)
    case = {"input": rng.standard_normal((1, 2 * patch, 3 * patch // 2, 5 * patch // 2)).astype(np.float32)}
    backend.warmup({"input": case["input"][None, :, :patch, :patch, :patch]})
    for batch in (1, 4):
        want = sliding_window.infer(backend.predict, case, patch, batch)[kits19.PREDICTION]
        got = device_window.infer(backend, case, patch, batch)[kits19.PREDICTION]
        assert got.dtype == np.uint8 and got.shape == want.shape == case["input"].shape[1:]
        assert len(np.unique(want)) > 1  # not a trivial volume
        agree = float(np.mean(got == want))
        assert agree == 1.0 if device == "cpu" else agree > 0.9995, (batch, agree)
    picked = sliding_window.segmenter(backend)
    assert getattr(picked, "func", None) is (device_window.infer if device == "gpu" else sliding_window.infer)


def test_dlrm_lookups_fused_answer_as_the_graph(models: dict[str, Path]) -> None:
    """dlrm's 26 table lookups as one gather from the tables laid end to end (``fuse_lookups``):
    the same outputs, one table tensor left instead of 26, and the index matrix's rows picked in
    the tables' order however the graph lists them."""
    import torch
    from mlperf_harness.backends.torch_graph import convert
    from mlperf_harness.backends.torch_rewrites import Lookups, constant_gathers, fuse_lookups

    proto = onnx.load(str(models["dlrm"]))
    model = convert(proto, [o.name for o in proto.graph.output], models["dlrm"]).eval()
    feeds = [torch.from_numpy(a) for a in _feeds("dlrm").values()]
    tables = [b for b in model.buffers() if b.dim() == 2 and b.shape[1] == 128]
    rows = sum(len(t) for t in tables)
    with torch.inference_mode():
        want = model(*feeds)
        assert fuse_lookups(model, torch.device("cpu")) == 26
        assert constant_gathers(model) == 0  # the per-table index rows went with the lookups
        got = model(*feeds)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    [lookups] = [m for m in model.modules() if isinstance(m, Lookups)]
    assert lookups.picks is None and len(lookups.table) == rows
    assert [b for b in model.buffers() if b.dim() == 2 and b.shape[1] == 128] == [lookups.table]
    assert fuse_lookups(model, torch.device("cpu")) == 0  # done once

    # Rows picked out of order: the lookups of a matrix whose rows the tables take reversed.
    rng = np.random.default_rng(0)
    table = torch.from_numpy(rng.random((10, 4), dtype=np.float32))
    starts, ids = torch.tensor([0, 6]), torch.tensor([[1, 2], [0, 3]])
    out = Lookups(table, starts, torch.tensor([1, 0]))(ids)
    assert torch.equal(out[0], table[[0, 3]]) and torch.equal(out[1], table[[7, 8]])
