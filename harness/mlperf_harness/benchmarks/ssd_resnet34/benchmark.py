"""SSD-ResNet34 on the benchmark contract: COCO 2017 val, one image per model call, a varying
number of detections per response, mAP as accuracy-coco.py --use-inv-map prints it.

The image is the sample's one tensor, ``image`` (3, S, S) float32, with S the model's input size:
1200 for the official resnet34-ssd1200.onnx and the synthetic ``size: full`` model (a GPU's work),
400 for the small synthetic one (``size: small``, the default). Preprocessing follows the run's
model size (``artifacts.model_size``); because S depends on it, the spec leaves it open
(``(3, None, None)``) and the store records each image's shape (one for all: the store reads them
as a fixed tensor, and batches are stacks of them).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ... import download
from ...backends.base import Backend, Tensors, TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_text, temp_path_for
from ...samples import SampleWriter
from ...spec import ModelSize, Source
from ..base import MODEL, AccuracyReport, Batch, Benchmark
from . import coco, pipeline
from . import model as ssd_model
from .accuracy import score

DATASET_JSON = "dataset.json"


class SSDResNet34(Benchmark):
    name = "ssd-resnet34"
    capabilities = {"dataset": True, "model": True, "preprocess": True, "accuracy": True, "synthetic": True}
    # Batches are stacks of the images (one shape a store: the store reads them as fixed), so a
    # backend can keep them on the device (device_resident, the default); none keeps them for the
    # official graph, which takes one image a call (TorchGraphBackend.reserve_samples refuses it).
    splits_batches = True

    def inputs(self, variant: str) -> tuple[TensorSpec, ...]:
        return pipeline.input_specs()  # no int8 input path: the variant does not change the image

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return pipeline.output_specs()

    def model_file(self, model_dir: Path) -> Path:
        return model_dir / coco.MODEL_FILE

    # --- download-model -----------------------------------------------------------------------
    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        target = out_dir / coco.MODEL_FILE
        if source.synthetic is not None:
            # The official file name, so model_file finds it; its input says the size (400 or 1200).
            return ssd_model.build_model(target, source.synthetic.seed, source.synthetic.size)
        download.fetch_file(source, out_dir, coco.MODEL_FILE, quiet=quiet)
        _check_model(target)
        return target

    # --- download-data ------------------------------------------------------------------------
    def prepare_dataset(
        self, source: Source, out_dir: Path, *, size: ModelSize = "small", quiet: bool = False
    ) -> dict[str, object]:
        if source.synthetic is not None:
            # Labelled by the model download-model makes for the same seed and size, built here again.
            seed, root = source.synthetic.seed, out_dir / "coco"
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                model_path = ssd_model.build_model(Path(tmp) / "ssd-labeller.onnx", seed, size)
                made = coco.synthesize_dataset(root, seed, source.synthetic.samples, model_path)
            facts: dict[str, object] = {"root": str(root), **made}
        else:
            if source.pvc is not None:
                root = coco.find_root(download.resolve_pvc(source.pvc))  # used in place
            else:
                if source.https is not None:
                    got = download.fetch_https(source.https, out_dir / "_download", quiet=quiet)
                else:
                    assert source.s3 is not None  # a Source holds exactly one kind
                    got = download.fetch_s3(source.s3, out_dir / "_download", quiet=quiet)
                root = coco.find_root(_unpack(got, out_dir / "coco") if got.is_file() else got)
            images = coco.load_annotations(root)["images"]
            for info in images[:10] + images[-10:]:
                if not (root / coco.IMAGES / info["file_name"]).is_file():
                    raise HarnessError(
                        f"{root / coco.IMAGES / info['file_name']}: missing image listed in {root / coco.ANNOTATIONS}"
                        "; unpack val2017.zip beside annotations/"
                    )
            facts = {"root": str(root), "count": len(images), "synthetic": False}
        atomic_write_text(out_dir / DATASET_JSON, json.dumps(facts, indent=2))
        return facts

    # --- preprocess ---------------------------------------------------------------------------
    def preprocess(
        self, dataset_dir: Path, out_dir: Path, variant: str, *, size: ModelSize = "small", quiet: bool = False
    ) -> list[Path]:
        path = dataset_dir / DATASET_JSON
        try:
            facts = json.loads(path.read_text())
            root = Path(facts["root"])
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise HarnessError(f"{path}: missing or unreadable ({exc}); run download-data again") from None
        side = ssd_model.VARIANTS[size].image_size
        if facts.get("image_size", side) != side:  # a synthetic set is labelled at its model's size
            raise HarnessError(
                f"{path}: a synthetic set made for a {facts['image_size']}-pixel model, preprocessed for a "
                f"{size} model ({side}); run download-data again for this model size"
            )
        n = len(coco.load_annotations(root)["images"])
        synthetic = bool(facts.get("synthetic"))
        with SampleWriter(out_dir, self.inputs(variant), n, layout="NCHW", synthetic=synthetic) as store:
            for sample in coco.preprocess(root, image_size=side):
                store.append(sample)
            # accuracy-coco.py reads <coco-dir>/annotations/instances_val2017.json: the preprocessed
            # folder is that directory for scoring (the images are not needed there).
            annotations = out_dir / coco.ANNOTATIONS
            annotations.parent.mkdir(parents=True, exist_ok=True)
            with temp_path_for(annotations) as tmp:
                shutil.copyfile(root / coco.ANNOTATIONS, tmp)
            return [*store.close(), annotations]

    # --- batching, inference, responses -------------------------------------------------------
    def infer(self, parts: Mapping[str, Backend], feeds: Tensors) -> dict[str, np.ndarray]:
        model = parts[MODEL]
        return pipeline.infer(model.predict, feeds, model.fixed_batch)

    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        return pipeline.responses(outputs, batch.indices)

    # --- accuracy -----------------------------------------------------------------------------
    def accuracy(self, accuracy_log: Path, preprocessed_dir: Path) -> AccuracyReport:
        with contextlib.redirect_stdout(io.StringIO()):  # score prints the script's line; the step reports it
            metrics, line = score(accuracy_log, preprocessed_dir)
        return AccuracyReport("mAP", metrics, line)

    def response_description(self) -> str:
        return (
            "float32 rows of 7 per detection with score >= 0.5, [qsl_idx, ymin, xmin, ymax, xmax, score, label] "
            "(box corners relative to the image, label 1..80 as the model gives it), a varying number per image "
            "and none for an image without such detections, as the reference's PostProcessCocoOnnx; so the "
            "script needs `--use-inv-map`"
        )

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        # mlcommons/inference, vision/classification_and_detection/tools/accuracy-coco.py
        return (
            "python3 vision/classification_and_detection/tools/accuracy-coco.py "
            f"--mlperf-accuracy-file {accuracy_log} --coco-dir {data_dir} --use-inv-map"
        )


def _unpack(archive: Path, dest: Path) -> Path:
    """A .zip (as COCO ships val2017.zip) or a tar of the dataset folder, unpacked into ``dest``."""
    stage = dest.with_name(dest.name + ".part")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(stage)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(stage, filter="data")
        else:
            raise HarnessError(
                f"{archive.name}: not a zip or tar archive of the COCO folder (annotations/ and val2017/)"
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise HarnessError(f"{archive.name}: corrupt or truncated archive ({exc}); fetch it again") from None
    shutil.rmtree(dest, ignore_errors=True)
    stage.replace(dest)
    return dest


def _check_model(path: Path) -> None:
    """The file is an ONNX graph with the official model's input and outputs."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise HarnessError(f"{path.name}: not a valid ONNX model ({str(exc).splitlines()[0][:160]})") from None
    names = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    if ssd_model.INPUT not in names or not set(ssd_model.OUTPUTS) <= outputs:
        raise HarnessError(
            f"{path.name}: not SSD-ResNet34 (inputs {sorted(names)}, outputs {sorted(outputs)}; expected "
            f"{ssd_model.INPUT!r} and {', '.join(ssd_model.OUTPUTS)}); use resnet34-ssd1200.onnx from zenodo 3228411"
        )
    side = ssd_model.image_size_of(path)
    if side != ssd_model.IMAGE_SIZE:  # the run preprocesses for the full model's 1200 (artifacts.model_size)
        raise HarnessError(
            f"{path.name}: takes {side}x{side} images, not the official {ssd_model.IMAGE_SIZE}x{ssd_model.IMAGE_SIZE}; "
            "a given model is preprocessed for as the full size (for the small synthetic one use model.synthetic)"
        )
