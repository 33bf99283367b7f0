"""model.synthetic.size: the spec field, the artifact keys that follow it, each benchmark's wiring,
ssd-resnet34's full graph through the pipeline's steps (graph shapes only, no full-size inference),
and graphs of fixed batch (the official ssd-resnet34's 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from harness_support import make_spec
from mlperf_harness import artifacts, steps
from mlperf_harness.backends.base import Backend
from mlperf_harness.backends.null import NullBackend
from mlperf_harness.benchmarks import get_benchmark
from mlperf_harness.benchmarks.base import MODEL
from mlperf_harness.errors import HarnessError
from mlperf_harness.loadgen.runner import fixed_batch_note
from mlperf_harness.samples import SampleStore
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_harness.workspace import Workspace
from pydantic import ValidationError

BENCHMARKS = ("resnet50", "ssd-resnet34", "bert", "dlrm", "rnnt", "3d-unet")


def test_size_is_small_by_default_full_accepted_and_others_refused() -> None:
    spec = make_spec()
    assert spec.model.synthetic is not None and spec.model.synthetic.size == "small"
    assert make_spec(model={"synthetic": {"size": "full"}}).model.synthetic.size == "full"  # type: ignore[union-attr]
    with pytest.raises(ValidationError) as err:
        make_spec(model={"synthetic": {"size": "large"}})
    assert "model.synthetic.size" in str(err.value) and "'small' or 'full'" in str(err.value)


def test_the_crd_explains_the_field() -> None:
    import yaml

    crd = yaml.safe_load((Path(__file__).parents[2] / "crds" / "mlperfruns.mlperf-operator.io.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    size = spec["model"]["properties"]["synthetic"]["properties"]["size"]
    assert size["enum"] == ["small", "full"] and size["default"] == "small"
    assert "the real architecture's sizes, for a GPU" in size["description"] and "float16" in size["description"]


def test_keys_follow_the_model_size() -> None:
    small, full = make_spec(), make_spec(model={"synthetic": {"size": "full"}})
    assert (artifacts.model_size(small), artifacts.model_size(full)) == ("small", "full")
    for key in (artifacts.model, artifacts.dataset, artifacts.preprocessed):
        assert key(small).key != key(full).key, key.__name__  # the synthetic data is the model's answers
    assert artifacts.model(full).inputs["size"] == "full"
    # A given model counts as full; a given dataset is not remade for a size, its preprocessing is.
    given = {"pvc": {"claimName": "models", "path": "resnet50_v1.onnx"}}
    assert artifacts.model_size(make_spec(model=given)) == "full"
    data = {"pvc": {"claimName": "data", "path": "imagenet"}}
    small_data, full_data = make_spec(dataset=data), make_spec(dataset=data, model={"synthetic": {"size": "full"}})
    assert artifacts.dataset(small_data).key == artifacts.dataset(full_data).key
    assert artifacts.preprocessed(small_data).key != artifacts.preprocessed(full_data).key


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_names_its_sizes(name: str) -> None:
    bench = get_benchmark(name)
    for size in ("small", "full"):
        assert size in bench.size_note(size)
    if name == "dlrm":
        from mlperf_harness.benchmarks.dlrm.model import ROW_BYTES, table_sizes

        assert "real row counts" in bench.size_note("full") and "SYNTHETIC" in bench.size_note("full")
        assert (
            sum(table_sizes("full")) * ROW_BYTES < 45 * 2**30
        )  # the 64 GiB disk holds it (the labeller's tables are its rows)


# Where each benchmark builds its synthetic model and its labelled set (module paths to patch) and the
# size its builder is asked for under the spec's "full".
P = "mlperf_harness.benchmarks"
WIRING = {
    "ssd-resnet34": (f"{P}.ssd_resnet34.model.build_model", f"{P}.ssd_resnet34.coco.synthesize_dataset", "full"),
    "bert": (f"{P}.bert.build_model", f"{P}.bert.synthesize_dataset", "full"),
    "dlrm": (f"{P}.dlrm.model.build_model", f"{P}.dlrm.synthetic.synthesize_dataset", "full"),
    "rnnt": (f"{P}.rnnt.model.build_model", f"{P}.rnnt.data.synthesize_dataset", "full"),
    "3d-unet": (f"{P}.unet3d.build_model", f"{P}.unet3d.synthesize_dataset", "full"),
}


class _Labelled(Exception):
    """Raised by the stub labeller: the test has seen what it needed."""


@pytest.mark.parametrize("name", WIRING)
def test_model_and_labeller_get_the_spec_size(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download-model builds the synthetic model of the source's size, download-data labels with the
    model of the run's size (the builders stubbed: the full ones are a GPU's work)."""
    build, label, expected = WIRING[name]
    sizes: list[str] = []

    def fake_build(path: Path, seed: int, size: str = "small", **_: Any) -> Path:
        sizes.append(size)
        return path

    def fake_label(*_: Any, **__: Any) -> dict[str, object]:
        raise _Labelled

    monkeypatch.setattr(build, fake_build)
    monkeypatch.setattr(label, fake_label)
    bench = get_benchmark(name)
    spec = make_spec(model={"synthetic": {"size": "full"}})  # its sources; the benchmark is the one under test
    for folder in ("m", "d"):  # as the steps make them
        (tmp_path / folder).mkdir()
    bench.prepare_model(spec.model, tmp_path / "m")
    with pytest.raises(_Labelled):
        bench.prepare_dataset(spec.dataset, tmp_path / "d", size=artifacts.model_size(spec))
    assert sizes == [expected, expected]


def test_a_benchmarks_generator_version_is_in_its_synthetic_keys() -> None:
    """dlrm's generator changed (float16 tables, the real row counts): its synthetic model and data
    keys carry its version, so a cache made before is not reused for them."""
    dlrm = make_spec(benchmark="dlrm", suite="v1.0", category="datacenter")
    assert artifacts.model(dlrm).inputs["version"] == artifacts.dataset(dlrm).inputs["version"] == 2


def _ssd_spec(data: Path, **over: Any) -> MLPerfRunSpec:
    spec: dict[str, Any] = {
        "benchmark": "ssd-resnet34",
        "suite": "v1.0",
        "category": "edge",
        "storage": {"create": {}},
        "system": {"gpuCount": 0},
        "testModes": ["PerformanceOnly"],
        "dataset": {"pvc": {"claimName": "coco", "path": str(data)}},
        "model": {"synthetic": {"seed": 3, "size": "full"}},
        "audits": [],
    }
    return MLPerfRunSpec.model_validate({**spec, **over})


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two COCO-format images (labelled by the small model: cheap), given as a dataset source."""
    from mlperf_harness.benchmarks.ssd_resnet34 import coco, model

    root = tmp_path_factory.mktemp("coco")
    labeller = model.build_model(root / "labeller.onnx", 3, "small")
    coco.synthesize_dataset(root / "coco", 3, 2, labeller)
    return root / "coco"


def test_ssd_full_through_the_steps(coco_dir: Path, tmp_path: Path) -> None:
    """size: full builds the 1200x1200 graph of full widths and preprocesses for it: the graph's shapes and
    initializers are checked, it is never run here."""
    ws = Workspace(_ssd_spec(coco_dir), tmp_path, "full", quiet=True)
    made = steps.download_model(ws)
    assert made.ok and "full" in made.message
    graph = onnx.load(str(ws.bench.model_file(ws.model_dir))).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 1200, 1200]
    small_ws = Workspace(_ssd_spec(coco_dir, model={"synthetic": {"seed": 3}}), tmp_path, "small", quiet=True)
    assert steps.download_model(small_ws).ok
    small = onnx.load(str(small_ws.bench.model_file(small_ws.model_dir))).graph
    assert [d.dim_value for d in small.input[0].type.tensor_type.shape.dim][1:] == [3, 400, 400]
    assert len(graph.initializer) == len(small.initializer)  # the same graph, other widths
    stem = {t.name: tuple(t.dims) for t in graph.initializer}[graph.node[0].input[1]]
    assert stem == (64, 3, 7, 7)  # ResNet-34's stem (the small graph's has 8 channels)
    assert steps.download_data(ws).ok and steps.preprocess(ws).ok
    store = SampleStore(ws.preprocessed_dir, ws.bench.inputs("fp32"))
    assert store.sample(0)["image"].shape == (3, 1200, 1200)
    assert steps.preprocess(small_ws).ok  # the same dataset, another preprocessed set
    assert SampleStore(small_ws.preprocessed_dir, ws.bench.inputs("fp32")).sample(0)["image"].shape == (3, 400, 400)


def test_a_synthetic_set_refuses_another_size(coco_dir: Path, tmp_path: Path) -> None:
    bench = get_benchmark("ssd-resnet34")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"root": str(coco_dir), "image_size": 400}))
    with pytest.raises(HarnessError, match="made for a 400-pixel model, preprocessed for a full model"):
        bench.preprocess(tmp_path / "d", tmp_path / "p", "fp32", size="full")


def test_a_given_ssd_model_must_take_1200(tmp_path: Path) -> None:
    from mlperf_harness.benchmarks.ssd_resnet34 import model

    small = model.build_model(tmp_path / "src" / "resnet34-ssd1200.onnx", 3, "small")
    source = make_spec(model={"pvc": {"claimName": "m", "path": str(small)}}).model
    with pytest.raises(HarnessError, match="takes 400x400 images, not the official 1200x1200"):
        get_benchmark("ssd-resnet34").prepare_model(source, tmp_path / "out")


def test_a_fixed_batch_graph_runs_call_by_call(tmp_path: Path) -> None:
    """The official graph's batch is 1: ssd's infer splits a batch into such calls (said with the
    result's backend); a benchmark that cannot is refused naming spec.batchSize."""
    import onnxruntime as ort
    from mlperf_harness.backends.onnxrt import OnnxRuntimeBackend
    from mlperf_harness.benchmarks.ssd_resnet34 import coco, model, pipeline

    dynamic = model.build(3, "small")
    fixed = onnx.ModelProto()
    fixed.CopyFrom(dynamic)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, str(tmp_path / "b1.onnx"))
    b1 = OnnxRuntimeBackend()
    b1.load(tmp_path / "b1.onnx", 2, "fp32", outputs=model.OUTPUTS)
    assert b1.fixed_batch == 1
    images = np.stack([coco.preprocess_image(coco.synthetic_image(3, i), 400) for i in range(3)])
    split = pipeline.infer(b1.predict, {"image": images}, b1.fixed_batch)
    sess = ort.InferenceSession(dynamic.SerializeToString(), providers=["CPUExecutionProvider"])
    whole = dict(zip(model.OUTPUTS, sess.run(list(model.OUTPUTS), {"image": images}), strict=True))
    for name in model.OUTPUTS:  # the same detections, padded alike (one image per call or three in one)
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-6)
    ssd = get_benchmark("ssd-resnet34")
    assert fixed_batch_note(ssd, {MODEL: b1}, 4) == " (model graph batch 1: batches of 4 run as 1-sample calls)"
    assert fixed_batch_note(ssd, {MODEL: b1}, 1) == ""
    other: Backend = NullBackend((), ())
    other.fixed_batch = 1
    with pytest.raises(HarnessError, match=r"spec\.batchSize: resnet50's model graph takes a batch of exactly 1"):
        fixed_batch_note(get_benchmark("resnet50"), {MODEL: other}, 8)


def test_bert_refuses_a_vocab_larger_than_the_model(tmp_path: Path) -> None:
    """A real SQuAD set's vocab.txt (30,522 words) with the small synthetic model (1,024 rows): refused."""
    from mlperf_harness.benchmarks.bert.squad import SPECIAL_TOKENS

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, *(f"w{i}" for i in range(2000))]) + "\n")
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"root": str(tmp_path / "d"), "synthetic": False}))
    with pytest.raises(HarnessError, match="more than the small synthetic BERT's 1,024 embedding rows"):
        get_benchmark("bert").preprocess(tmp_path / "d", tmp_path / "p", "fp32", size="small")
