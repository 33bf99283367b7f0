"""3d-unet on BraTS 2019 (v1.0's): the benchmark on the contract, as the v1.0 round table names it.

Dataset: nnU-Net's ``Task043_BraTS2019`` folder (``imagesTr/``, ``labelsTr/``), or a .tar/.tar.gz
of it, from a URL, S3 or a PVC; or a SYNTHETIC set labelled by the synthetic model. Model:
224_224_160_dyanmic_bs.onnx (zenodo 3928973; the file name is the reference's, typo included):
input ``input`` (N, 4, 224, 224, 160) float32, the first output ``output`` (N, 4, 224, 224, 160)
the full-resolution head. A sample is one preprocessed case padded to the model's input; the model
runs once per case (no sliding window) and the response is that head as float16, as the
reference's SUTs answer and accuracy-brats.py reads (``--output_dtype float16``).

The synthetic model is the small variant of nnU-Net's Generic_UNet (64 x 64 x 32 inputs); the
full one is ``brats_synthetic.build_model(path, seed, "full")``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...backends.base import Backend, Tensors, TensorSpec
from ...errors import HarnessError
from ...spec import ModelSize
from ..base import MODEL, AccuracyReport, Batch
from . import Unet3D, brats, source_root, write_store
from .brats_synthetic import build_model, synthesize_dataset
from .model import input_shape

MODEL_FILE = "224_224_160_dyanmic_bs.onnx"
TASK = "Task043_BraTS2019"
# Each dataset's volumes share one shape, the model's input (224 x 224 x 160, or the small model's).
SAMPLE = TensorSpec(brats.INPUT, (brats.MODALITIES, None, None, None), "float32")
LOGITS = TensorSpec(brats.OUTPUT, (brats.CLASSES, None, None, None), "float16")


class Unet3DBraTS(Unet3D):
    model_name = MODEL_FILE
    dataset_folder = "brats"
    archive_holds = f"nnU-Net's {TASK} folder (imagesTr/, labelsTr/)"

    def inputs(self, variant: str) -> tuple[TensorSpec, ...]:
        return (SAMPLE,)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (LOGITS,)

    # --- the dataset's and model's own parts --------------------------------------------------------
    def synthetic_model(self, target: Path, seed: int, size: ModelSize) -> Path:
        return build_model(target, seed, size)

    def check_model(self, target: Path) -> None:
        input_shape(target, brats.MODALITIES)  # input (N, 4, D, H, W) named as the official model's

    def synthesize(self, out_dir: Path, seed: int, n: int, size: ModelSize, cases: ModelSize = "small") -> Path:
        # ``cases`` is KiTS19's: BraTS's synthetic cases already have the real cases' one shape (the model's input).
        root = out_dir / TASK
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            synthesize_dataset(root, seed, n, build_model(Path(tmp) / MODEL_FILE, seed, size))
        return root

    def find_root(self, root: Path) -> Path:
        """The folder holding imagesTr/ (Task043_BraTS2019, or an archive's top)."""
        if (root / "imagesTr").is_dir():
            return root
        found = sorted(p.parent for p in root.rglob("imagesTr") if p.is_dir())
        if not found:
            raise HarnessError(f"{root}: no imagesTr/ folder; give nnU-Net's {TASK} folder or an archive of it")
        return found[0]

    def case_list(self, root: Path) -> list[str]:
        return brats.case_list(root)

    # --- preprocess ---------------------------------------------------------------------------
    def preprocess(
        self, dataset_dir: Path, out_dir: Path, variant: str, *, size: ModelSize = "small", quiet: bool = False
    ) -> list[Path]:
        """The sample store, and the reference's layout that accuracy-brats.py reads
        (``preprocessed_files.pkl``, ``<case>.pkl``) with the cases' ``labelsTr/``; the same for
        either model size (the model takes the whole volume)."""
        root = source_root(dataset_dir)
        cases = brats.case_list(root)
        samples = brats.preprocess(root, reference_dir=out_dir)
        written = write_store(out_dir, SAMPLE, len(cases), samples, brats.is_synthetic(root))
        reference = [out_dir / f"{c}.pkl" for c in cases] + [out_dir / brats.LABELS_DIR / f"{c}.nii.gz" for c in cases]
        return [*written, *reference, out_dir / "preprocessed_files.pkl", out_dir / brats.CASES_JSON]

    # --- batching, inference, responses ---------------------------------------------------------
    def collate(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return brats.collate(samples)  # one shape per dataset: a stack

    def infer(self, parts: Mapping[str, Backend], feeds: Tensors) -> dict[str, np.ndarray]:
        return brats.infer(parts[MODEL].predict, feeds)

    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        return brats.responses(outputs, len(batch))

    # --- accuracy -------------------------------------------------------------------------------
    def accuracy(self, accuracy_log: Path, preprocessed_dir: Path) -> AccuracyReport:
        # "mean" is the mean of the three regions' DICE, the round's "mean DICE".
        metrics, line = brats.score(accuracy_log, preprocessed_dir, subset=True)
        return AccuracyReport("mean", metrics, line)

    def response_description(self) -> str:
        return (
            "the model's full-resolution output per case, float16 logits (4 classes x the padded input's "
            "D x H x W, 4 x 224 x 224 x 160 for the official model) in C order, as the reference's SUTs answer, "
            "so the script's default `--output_dtype float16` applies"
        )

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        # mlcommons/inference r1.0, vision/medical_imaging/3d-unet/accuracy-brats.py (with its nnUnet
        # submodule); data_dir holds preprocessed_files.pkl, <case>.pkl and labelsTr/ as preprocess wrote them.
        return (
            "python3 vision/medical_imaging/3d-unet/accuracy-brats.py "
            f"--log_file {accuracy_log} --preprocessed_data_dir {data_dir} "
            f"--postprocessed_data_dir postprocessed_data --label_data_dir {data_dir / brats.LABELS_DIR} "
            "--output_dtype float16"
        )
