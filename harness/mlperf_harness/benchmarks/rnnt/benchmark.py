"""rnnt on the benchmark contract: LibriSpeech dev-clean (utterances of at most 15 s), the RNN-T as
three graphs (encoder, prediction, joint) that ``infer`` drives with the greedy decoder, 100 - WER.

Dataset: the LibriSpeech dev-clean download (``dev-clean.tar.gz``: ``LibriSpeech/dev-clean/...``
FLAC and transcripts), or a directory that already holds the reference's conversion
(``dev-clean-wav/`` and ``dev-clean-wav.json``), from a URL, S3 or a PVC; or SYNTHETIC. Model: the
three graphs ``rnnt_encoder.onnx``, ``rnnt_prediction.onnx``, ``rnnt_joint.onnx`` (a tar of them
or a directory), or the reference's PyTorch checkpoint (``.pt``), converted where torch is
installed; or SYNTHETIC of ``model.synthetic.size``: small (every width narrowed, so CPU runs take
seconds) or full (the real widths, a minute to build on a CPU; for a GPU).

Samples are ragged: a ``(frames, 240)`` float32 feature matrix and its frame count each; a batch is
padded to its longest utterance only (``collate``), and ``infer`` runs the encoder once, then the
prediction and joint networks frame by frame (so samples are never device-resident); on the pytorch
backend's GPU the decoder's state stays on the device (``device_decoder``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ... import download
from ...backends.base import Backend, Tensors, TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_text, staging_dir
from ...samples import SampleWriter
from ...spec import ModelSize, Source
from ..base import AccuracyReport, Batch, Benchmark
from . import FILES, MANIFEST, accuracy_command

if TYPE_CHECKING:
    from .data import Utterance

DATASET_JSON = "dataset.json"
METRIC = "100-WER"  # the round table's metric: accuracy_eval.py's accuracy=..%
# What the model hands the responses: each utterance's labels (padded), and how many there are.
LABELS, LABEL_COUNT = "labels", "label_count"


class Rnnt(Benchmark):
    name = "rnnt"
    capabilities = {"dataset": True, "model": True, "preprocess": True, "accuracy": True, "synthetic": True}
    device_resident = False  # infer is a decoder loop over three parts, not one call on the samples
    sort_tensor = "feature"  # a batch is padded to its longest utterance: Offline's batches by frames

    def inputs(self, variant: str) -> tuple[TensorSpec, ...]:
        from .model import SAMPLE_SPECS  # feature (None, 240) float32, feature_length () int64

        return SAMPLE_SPECS  # no int8 input path: the features go in as float32 whatever the engine

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec(LABELS, (None,), "int64"), TensorSpec(LABEL_COUNT, (), "int64"))

    def model_file(self, model_dir: Path) -> Path:
        return model_dir / FILES["encoder"]

    def model_files(self, model_dir: Path) -> dict[str, Path]:
        return {part: model_dir / name for part, name in FILES.items()}

    # --- download-model -----------------------------------------------------------------------
    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        if source.synthetic is not None:
            from .model import build_model

            build_model(out_dir, source.synthetic.seed, source.synthetic.size)
            return self.model_file(out_dir)
        if source.https is not None:
            got = download.fetch_https(source.https, out_dir / "_download", quiet=quiet)
        elif source.s3 is not None:
            got = download.fetch_s3(source.s3, out_dir / "_download", quiet=quiet)
        else:
            assert source.pvc is not None
            got = download.resolve_pvc(source.pvc)
        if got.is_file() and got.suffix in (".pt", ".pth"):
            _convert_checkpoint(got, out_dir)
        else:
            root = (
                download.unpack(got, out_dir / "_unpacked", "LibriSpeech dev-clean or the model's files")
                if got.is_file()
                else got
            )
            for part, name in FILES.items():
                found = sorted(root.rglob(name))
                if not found:
                    raise HarnessError(
                        f"{root / name}: missing RNN-T {part} graph; the model source must hold "
                        f"{', '.join(FILES.values())} (or be the reference's .pt checkpoint)"
                    )
                download.copy_file_verified(found[0], out_dir)
        for path in self.model_files(out_dir).values():
            _check_onnx(path)
        shutil.rmtree(out_dir / "_unpacked", ignore_errors=True)
        return self.model_file(out_dir)

    # --- download-data ------------------------------------------------------------------------
    def prepare_dataset(
        self, source: Source, out_dir: Path, *, size: ModelSize = "small", quiet: bool = False
    ) -> dict[str, object]:
        from .data import SOURCE, convert_dataset, load_manifest

        facts: dict[str, object]
        if source.synthetic is not None:
            facts = self._synthesize(source.synthetic.samples, source.synthetic.seed, size, out_dir)
            root = out_dir
        else:
            if source.pvc is not None:
                got = download.resolve_pvc(source.pvc)  # used in place, converted beside the download
            elif source.https is not None:
                got = download.fetch_https(source.https, out_dir / "_download", quiet=quiet)
            else:
                assert source.s3 is not None
                got = download.fetch_s3(source.s3, out_dir / "_download", quiet=quiet)
            found = (
                download.unpack(got, out_dir / "librispeech", "LibriSpeech dev-clean or the model's files")
                if got.is_file()
                else got
            )
            root = _dataset_root(found)
            if not (root / MANIFEST).is_file():
                convert_dataset(root, out_dir)  # FLAC -> wav as the reference's run.sh does, into out_dir
                root = out_dir
            facts = {"synthetic": False}
        if not (root / MANIFEST).is_file() and (root / SOURCE).is_dir():
            convert_dataset(root)
        count = len(load_manifest(root))
        if count == 0:
            raise HarnessError(f"{root / MANIFEST}: no utterance of at most 15 s; is it LibriSpeech dev-clean?")
        facts = {**facts, "root": str(root), "count": count}
        atomic_write_text(out_dir / DATASET_JSON, json.dumps(facts, indent=2))
        return facts

    def _synthesize(self, n: int, seed: int, size: ModelSize, out_dir: Path) -> dict[str, object]:
        """SYNTHETIC dev-clean transcribed by the FP32 synthetic model of the same seed and size
        (the one download-model makes), so an FP32 accuracy run scores WER 0 for real."""
        from .data import synthesize_dataset
        from .model import build_model

        with staging_dir(out_dir / "_model") as model_dir:
            build_model(model_dir, seed, size)
            facts = synthesize_dataset(out_dir, seed, n, model_dir)
        shutil.rmtree(out_dir / "_model", ignore_errors=True)
        return facts

    # --- preprocess ---------------------------------------------------------------------------
    def preprocess(
        self, dataset_dir: Path, out_dir: Path, variant: str, *, size: ModelSize = "small", quiet: bool = False
    ) -> list[Path]:
        from ..resnet50 import progress
        from .data import load_manifest, read_wav
        from .features import filterbank_features

        facts = json.loads(_read(dataset_dir / DATASET_JSON))
        root = Path(facts["root"])
        utterances = load_manifest(root)

        def load(utt: Utterance) -> dict[str, np.ndarray]:
            feat = filterbank_features(read_wav(utt.audio_path))
            return {"feature": feat, "feature_length": np.array(feat.shape[0], dtype=np.int64)}

        n = len(utterances)
        with SampleWriter(out_dir, self.inputs(variant), n, synthetic=bool(facts.get("synthetic"))) as store:
            with progress(quiet) as bar, ThreadPoolExecutor(max_workers=2) as pool:
                task = bar.add_task(f"preprocess {n} utterances", total=n)
                for sample in pool.map(load, utterances):
                    store.append(sample)
                    bar.advance(task)
            # The transcripts, for scoring (and the official script's --manifest).
            atomic_write_text(out_dir / MANIFEST, (root / MANIFEST).read_text(encoding="utf-8"))
            return [*store.close(), out_dir / MANIFEST]

    # --- batching, inference, responses --------------------------------------------------------
    def collate(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        from .decoder import collate

        return collate(samples)

    def infer(self, parts: Mapping[str, Backend], feeds: Tensors) -> dict[str, np.ndarray]:
        from .decoder import infer, on_device

        if on_device(parts):
            from .device_decoder import decoder_for

            return decoder_for(parts).infer(parts, feeds)

        def run(part: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return parts[part].predict(tensors)

        return infer(run, dict(feeds))

    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        from .decoder import responses

        return responses(outputs, len(batch))

    # --- accuracy ---------------------------------------------------------------------------------
    def accuracy(self, accuracy_log: Path, preprocessed_dir: Path) -> AccuracyReport:
        from .accuracy import score

        metrics, line = score(accuracy_log, preprocessed_dir)
        counts = {"errors": int(metrics["errors"]), "words": int(metrics["words"])}
        figures = {METRIC: metrics["accuracy"], "WER": metrics["wer"]}
        return AccuracyReport(METRIC, figures, line, counts)

    def response_description(self) -> str:
        return (
            "one int64 array per utterance, its greedy-decoded label indices (0 = space, 1..26 = a..z, "
            "27 = apostrophe), as the reference SUT responds, so the script needs `--output_dtype int64`"
        )

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        return accuracy_command(accuracy_log.parent, data_dir)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing; run download-data first") from None


def _dataset_root(found: Path) -> Path:
    """The directory that holds the conversion (dev-clean-wav.json) or the download (LibriSpeech/dev-clean)."""
    from .data import SOURCE

    for candidate in (found, *sorted(p for p in found.rglob("*") if p.is_dir())):
        if (candidate / MANIFEST).is_file() or (candidate / SOURCE).is_dir():
            return candidate
    raise HarnessError(
        f"{found}: neither {MANIFEST} nor {SOURCE}/ inside; point the dataset at LibriSpeech dev-clean"
        " (dev-clean.tar.gz) or at its conversion"
    )


def _convert_checkpoint(path: Path, out_dir: Path) -> None:
    """The reference's PyTorch checkpoint -> the three graphs (needs torch, as loading it does)."""
    try:
        import torch
    except ImportError:
        raise HarnessError(
            f"{path.name}: converting the RNN-T checkpoint needs torch (pip install torch), or give the three "
            f"converted graphs ({', '.join(FILES.values())}) as a tar or a directory"
        ) from None
    from .model import checkpoint_graphs, write_graphs

    try:
        checkpoint = torch.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises many kinds for a bad file
        raise HarnessError(f"{path.name}: not a loadable PyTorch checkpoint ({exc}); download it again") from None
    state = checkpoint.get("state_dict", checkpoint)
    arrays = {k: v.numpy() for k, v in state.items() if hasattr(v, "numpy") and not k.startswith("audio_preprocessor")}
    write_graphs(checkpoint_graphs(arrays, f"RNN-T converted from {path.name}"), out_dir)


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise HarnessError(f"{path.name}: not a valid ONNX model ({str(exc).splitlines()[0][:160]})") from None
