"""3d-unet on KiTS19 (the current round's): the benchmark on the contract.

Dataset: KiTS19's ``data`` directory (``case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz``),
or a .tar/.tar.gz of it, from a URL, S3 or a PVC; or a SYNTHETIC set labelled by the synthetic
model. Model: 3dunet_kits19_128x128x128_dynbatch.onnx (input ``input`` (N, 1, 128, 128, 128)
float32, output ``output`` (N, 3, 128, 128, 128) logits). A sample is one preprocessed case at its
own size; ``infer`` walks it with the reference's Gaussian sliding window, so a batch is a list of
whole cases (``batchSize`` counts cases) and the model sees ``PATCH_BATCH`` patches per call.

The synthetic model (``model.synthetic.size``) is small (32^3 patches, narrow, fast on a CPU) or
full (the official architecture, 128^3 patches, for a GPU); the synthetic dataset is labelled by
the model of the run's size. Its cases (``dataset.synthetic.size``) are small (one or one and a
half patches a side, CI) or full (KiTS19's preprocessed shapes, 64.2 windows a case over the 43:
the cases/s of a run then compares with published 3d-unet figures).

BraTS 2019 (v1.0's 3d-unet, ``brats_benchmark.Unet3DBraTS``) is a subclass: another dataset,
model, preprocessing and metric behind the same download steps. The v1.0 round table names it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ... import download
from ...backends.base import Backend, Tensors, TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_text
from ...samples import Sample, SampleWriter
from ...spec import ModelSize, Source
from ..base import MODEL, AccuracyReport, Batch, Benchmark
from . import kits19
from .kits19 import INPUT, preprocess, score
from .model import OUTPUT, build_model
from .sliding_window import collate, infer, responses, segmenter
from .synthetic import synthesize_dataset

MODEL_FILE = "3dunet_kits19_128x128x128_dynbatch.onnx"
SOURCE_JSON = "source.json"  # where download-data left the cases
# Patches per model call: one, as the reference's SUTs, so an engine built for any batch size takes
# it (TensorRT's buffers hold batchSize rows, and batchSize counts cases here). The synthetic labels
# come from the FP32 model run the same way (another batch can move a logit by an ulp, flip a tie).
PATCH_BATCH = 1
SAMPLE = TensorSpec(INPUT, (1, None, None, None), "float32")
# What ``infer`` makes of the model's logits, one per case: the label volume (D, H, W) uint8.
LABELS = TensorSpec(OUTPUT, (None, None, None), "uint8")


def _objects(arrays: list[np.ndarray]) -> np.ndarray:
    """Arrays of different shapes, one per sample, as a (n,) object array (no padding, no copy)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class Unet3D(Benchmark):
    name = "3d-unet"
    capabilities = {"dataset": True, "model": True, "preprocess": True, "accuracy": True, "synthetic": True}
    device_resident = False  # many model calls per sample (the sliding window)
    # What the rounds' datasets and models differ in (BraTS 2019 overrides these and the hooks below).
    model_name = MODEL_FILE
    dataset_folder = "kits19"  # where an archive is unpacked
    archive_holds = "KiTS19's data directory (case_XXXXX/ folders)"

    def inputs(self, variant: str) -> tuple[TensorSpec, ...]:
        return (SAMPLE,)  # no int8 input path: the volume is float32 for every engine

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (LABELS,)

    def model_file(self, model_dir: Path) -> Path:
        return model_dir / self.model_name

    # --- the dataset's and model's own parts --------------------------------------------------------
    def synthetic_model(self, target: Path, seed: int, size: ModelSize) -> Path:
        return build_model(target, seed, size)

    def check_model(self, target: Path) -> None:
        from .model import patch_size

        patch_size(target)  # input (N, 1, P, P, P) named as the official model's

    def synthesize(self, out_dir: Path, seed: int, n: int, size: ModelSize, cases: ModelSize = "small") -> Path:
        """A SYNTHETIC dataset labelled by the model download-model makes for the same seed and size;
        returns its root. ``cases``: small (CI) or full (KiTS19's preprocessed shapes, labelled on
        a GPU where torch sees one)."""
        import tempfile

        from .synthetic import gpu_labeller

        root = out_dir / "kits19" / "data"
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            model = build_model(Path(tmp) / MODEL_FILE, seed, size)
            labeller = gpu_labeller() if cases == "full" else None
            synthesize_dataset(root, seed, n, model, batch_size=PATCH_BATCH, size=cases, labeller=labeller)
        return root

    def find_root(self, root: Path) -> Path:
        return _find_cases(root)

    def case_list(self, root: Path) -> list[str]:
        return kits19.case_list(root)

    # --- download-model -----------------------------------------------------------------------
    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        target = out_dir / self.model_name
        if source.synthetic is not None:
            return self.synthetic_model(target, source.synthetic.seed, source.synthetic.size)
        download.fetch_file(source, out_dir, self.model_name, quiet=quiet)
        try:
            self.check_model(target)
        except HarnessError:
            target.unlink(missing_ok=True)
            raise
        return target

    # --- download-data ------------------------------------------------------------------------
    def prepare_dataset(
        self, source: Source, out_dir: Path, *, size: ModelSize = "small", quiet: bool = False
    ) -> dict[str, object]:
        if source.synthetic is not None:
            synthetic = source.synthetic
            root = self.synthesize(out_dir, synthetic.seed, synthetic.samples, size, cases=synthetic.size)
            facts: dict[str, object] = {"root": str(root), "count": source.synthetic.samples, "synthetic": True}
        else:
            if source.pvc is not None:
                root = download.resolve_pvc(source.pvc)  # used in place
            else:
                if source.https is not None:
                    got = download.fetch_https(source.https, out_dir / "_download", quiet=quiet)
                else:
                    assert source.s3 is not None
                    got = download.fetch_s3(source.s3, out_dir / "_download", quiet=quiet)
                root = download.unpack(got, out_dir / self.dataset_folder, self.archive_holds) if got.is_file() else got
            root = self.find_root(root)
            facts = {"root": str(root), "count": len(self.case_list(root)), "synthetic": False}
        atomic_write_text(out_dir / SOURCE_JSON, json.dumps(facts, indent=2))
        return facts

    # --- preprocess ---------------------------------------------------------------------------
    def preprocess(
        self, dataset_dir: Path, out_dir: Path, variant: str, *, size: ModelSize = "small", quiet: bool = False
    ) -> list[Path]:
        """The sample store, and the ground truth in the reference's layout (``nifti/<case>/
        segmentation.nii.gz``, ``preprocessed_files.pkl``) that accuracy_kits.py reads."""
        root = source_root(dataset_dir)
        cases = kits19.case_list(root)
        samples = preprocess(root, reference_dir=out_dir)
        written = write_store(out_dir, SAMPLE, len(cases), samples, kits19.is_synthetic(root))
        truth = [out_dir / "nifti" / c / kits19.SEGMENTATION for c in cases]
        return [*written, *truth, out_dir / kits19.PREPROCESSED_FILES, out_dir / kits19.CASES_JSON]

    # --- batching, inference, responses ---------------------------------------------------------
    def collate(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        # Cases of different sizes stay separate: the sliding window walks each one.
        return {INPUT: _objects([s[INPUT] for s in samples])}

    def infer(self, parts: Mapping[str, Backend], feeds: Tensors) -> dict[str, np.ndarray]:
        backend = parts[MODEL]
        patch, segment = _patch_of(backend), segmenter(backend)
        labels = [segment({INPUT: v}, patch, PATCH_BATCH)[kits19.PREDICTION] for v in feeds[INPUT]]
        return {OUTPUT: _objects(labels)}

    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        # Each case's label volume as uint8 bytes in C order (the null backend's are 1 voxel).
        return [np.ascontiguousarray(v, dtype=np.uint8).reshape(-1) for v in outputs[OUTPUT]]

    # --- accuracy -------------------------------------------------------------------------------
    def accuracy(self, accuracy_log: Path, preprocessed_dir: Path) -> AccuracyReport:
        # "mean" is the composite DICE (kidney and tumour averaged), the round's "mean DICE".
        metrics, line = score(accuracy_log, preprocessed_dir, subset=True)
        return AccuracyReport("mean", metrics, line)

    def response_description(self) -> str:
        return (
            "one uint8 label volume per case (0 background, 1 kidney, 2 tumour), of the preprocessed "
            "case's shape D x H x W in C order, so the script needs `--output_dtype uint8`"
        )

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        # mlcommons/inference, vision/medical_imaging/3d-unet-kits19/accuracy_kits.py; data_dir holds
        # preprocessed_files.pkl and nifti/ as the reference's preprocess.py writes them.
        return (
            "python3 vision/medical_imaging/3d-unet-kits19/accuracy_kits.py "
            f"--log_file {accuracy_log} --preprocessed_data_dir {data_dir} "
            "--postprocessed_data_dir postprocessed_data --output_dtype uint8"
        )


def source_root(dataset_dir: Path) -> Path:
    """Where download-data left the cases."""
    meta = dataset_dir / SOURCE_JSON
    if not meta.is_file():
        raise HarnessError(f"{meta}: missing; run download-data first")
    return Path(json.loads(meta.read_text())["root"])


def write_store(out_dir: Path, spec: TensorSpec, count: int, samples: Iterable[Sample], synthetic: bool) -> list[Path]:
    """The sample store of ``count`` volumes (one tensor, stored at each case's own size)."""
    with SampleWriter(out_dir, [spec], count, layout="NCDHW", synthetic=synthetic) as store:
        for sample in samples:
            store.append(sample)
        return store.close()


def _patch_of(backend: Backend) -> int:
    """The model's cubic patch edge from its input (N, 1, P, P, P): 128 official, 32 small."""
    specs = {s.name: s for s in backend.input_specs}
    spec = specs.get(INPUT)
    if spec is None or len(spec.shape) != 4 or spec.shape[1] is None:
        raise HarnessError(f"3d-unet model: input {INPUT!r} (N, 1, P, P, P) not found; got {list(specs)}")
    return int(spec.shape[1])


def _find_cases(root: Path) -> Path:
    """The directory holding the case_XXXXX folders (kits19/data, or the archive's top)."""
    if (root / kits19.INFERENCE_CASES[0]).is_dir() or (root / kits19.DATASET_JSON).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(kits19.INFERENCE_CASES[0]) if p.is_dir())
    if not found:
        raise HarnessError(
            f"{root}: no KiTS19 case folders ({kits19.INFERENCE_CASES[0]}/ ...); give kits19/data or an archive of it"
        )
    return found[0]


__all__ = ["Unet3D", "build_model", "collate", "infer", "preprocess", "responses", "score", "synthesize_dataset"]
