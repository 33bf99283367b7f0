"""bert: BERT-Large on SQuAD v1.1 dev (seq 384, query 64, stride 128), F1 as accuracy-squad.py scores it.

Dataset: ``dev-v1.1.json`` with the model's WordPiece ``vocab.txt`` beside it (a directory or a
.tar/.tar.gz holding both; the vocab decides the features, so it travels with the data): from a URL,
S3, a PVC, or synthetic. Model: the reference's FP32 ``model.onnx`` (int64 input_ids, input_mask,
segment_ids; output_start_logits, output_end_logits). The round's accuracy level (bert-99,
bert-99.9) is the run's configVer; the pipeline is the same for both.

Synthetic (``model.synthetic.size``): ``small`` (the default) is the real architecture with 2
layers, hidden 128 and a 1,024-word vocab, minutes on a CPU; ``full`` is BERT-Large (24 layers,
hidden 1024, the real 30,522-word vocab size), for a GPU. The synthetic dataset is answered by the
model of the run's size, and its vocab.txt is that model's (the features are made with it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ... import download
from ...backends.base import Backend, Tensors, TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_text, temp_path_for
from ...samples import SampleStore, SampleWriter
from ...spec import ModelSize, Source
from ..base import MODEL, AccuracyReport, Batch, Benchmark
from .accuracy import RESPONSE_DESCRIPTION, accuracy_command, score
from .model import INPUTS, OUTPUTS, build_model
from .pipeline import (
    FAKE_QUANT_NAMES,
    OUTPUT_SPECS,
    SAMPLE_SPECS,
    collate,
    dynamic_sequence,
    infer,
    preprocess,
    real_lengths,
    responses,
    to_model,
    warm_batches,
)
from .squad import DEV_JSON, VOCAB, load_features, read_vocab
from .synthetic import synthesize_dataset

MODEL_FILE = "model.onnx"  # the reference's FP32 model (bert_tf_v1_1_large_fp32_384_v2)
DATASET_JSON = "dataset.json"


class Bert(Benchmark):
    name = "bert"
    capabilities = {"dataset": True, "model": True, "preprocess": True, "accuracy": True, "synthetic": True}
    # The store holds int32 and the official model takes int64: ``infer`` casts, so the samples do
    # not go to the device as they are.
    device_resident = False

    def inputs(self, variant: str) -> tuple[TensorSpec, ...]:
        return SAMPLE_SPECS  # token ids, no int8 input path: the same for every variant

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return OUTPUT_SPECS

    def model_file(self, model_dir: Path) -> Path:
        return model_dir / MODEL_FILE

    # --- download-model -----------------------------------------------------------------------
    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        target = out_dir / MODEL_FILE
        if source.synthetic is not None:
            return build_model(target, source.synthetic.seed, source.synthetic.size)
        download.fetch_file(source, out_dir, MODEL_FILE, quiet=quiet)
        _check_model(target)
        return target

    # --- download-data ------------------------------------------------------------------------
    def prepare_dataset(
        self, source: Source, out_dir: Path, *, size: ModelSize = "small", quiet: bool = False
    ) -> dict[str, object]:
        if source.synthetic is not None:
            return self._synthesize(source.synthetic.samples, source.synthetic.seed, size, out_dir)
        if source.pvc is not None:
            root = download.resolve_pvc(source.pvc)  # used in place
        else:
            if source.https:
                got = download.fetch_https(source.https, out_dir / "_download", quiet=quiet)
            else:
                assert source.s3 is not None  # a Source holds exactly one kind
                got = download.fetch_s3(source.s3, out_dir / "_download", quiet=quiet)
            root = (
                download.unpack(got, out_dir / "squad", "dev-v1.1.json and the model's vocab.txt")
                if got.is_file() and got.suffix != ".json"
                else got
            )
        root = _find_squad_root(root)
        _, features = load_features(root)  # checks both files now rather than at preprocess
        facts = {"root": str(root), "count": len(features), "synthetic": False}
        atomic_write_text(out_dir / DATASET_JSON, json.dumps(facts, indent=2))
        return facts

    def _synthesize(self, n: int, seed: int, size: ModelSize, out_dir: Path) -> dict[str, object]:
        """``n`` questions answered by the FP32 synthetic model of the same seed and size (the one
        ``download-model`` makes), so an FP32 accuracy run scores 100 for real."""
        root = out_dir / "squad"
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            model = build_model(Path(tmp) / MODEL_FILE, seed, size)
            made = synthesize_dataset(root, seed, n, model)
        facts: dict[str, object] = {
            "root": str(root),
            "count": made["features"],
            "questions": made["questions"],
            "synthetic": True,
            "seed": seed,
        }
        atomic_write_text(out_dir / DATASET_JSON, json.dumps(facts, indent=2))
        return facts

    # --- preprocess ---------------------------------------------------------------------------
    def preprocess(
        self, dataset_dir: Path, out_dir: Path, variant: str, *, size: ModelSize = "small", quiet: bool = False
    ) -> list[Path]:
        facts = json.loads((dataset_dir / DATASET_JSON).read_text())
        root = Path(facts["root"])
        _check_vocab(root / VOCAB, size)
        _, features = load_features(root)
        synthetic = bool(facts.get("synthetic"))
        with SampleWriter(out_dir, SAMPLE_SPECS, len(features), synthetic=synthetic) as store:
            for f in features:
                store.append({"input_ids": f.input_ids, "input_mask": f.input_mask, "segment_ids": f.segment_ids})
            # What scoring reads (and the official script's --val_data / --vocab_file) beside the samples.
            copies = [out_dir / DEV_JSON, out_dir / VOCAB]
            for dst in copies:
                with temp_path_for(dst) as tmp:
                    shutil.copyfile(root / dst.name, tmp)
            return [*store.close(), *copies]

    # --- inference, responses and accuracy ----------------------------------------------------------
    def infer(self, parts: Mapping[str, Backend], feeds: Tensors) -> dict[str, np.ndarray]:
        # The SUT gathers the fixed (384) samples into buffers (``collate`` is not called): a batch
        # is trimmed here, for a model that takes any length.
        model, specs = parts[MODEL], parts[MODEL].input_specs
        return infer(lambda batch: model.predict(to_model(batch, specs)), dict(feeds), dynamic_sequence(specs))

    def lengths(self, store: SampleStore) -> np.ndarray | None:
        # Stored padded to 384, trimmed per batch (``infer``): batches of like length trim most.
        return real_lengths(np.asarray(store.fixed["input_mask"]))

    def warm_batches(self, variant: str, batch: int) -> list[dict[str, np.ndarray]]:
        return warm_batches(batch)

    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> np.ndarray:
        return responses(outputs, batch)

    def accuracy(self, accuracy_log: Path, preprocessed_dir: Path) -> AccuracyReport:
        metrics, line = score(accuracy_log, preprocessed_dir)
        return AccuracyReport("f1", metrics, line)

    def response_description(self) -> str:
        return RESPONSE_DESCRIPTION

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        return accuracy_command(accuracy_log, data_dir)


def _find_squad_root(root: Path) -> Path:
    """The directory holding dev-v1.1.json (searched below ``root``); its vocab.txt must be beside it."""
    if root.is_file():
        root = root.parent
    found = [root] if (root / DEV_JSON).is_file() else sorted(p.parent for p in root.rglob(DEV_JSON))
    if not found:
        raise HarnessError(f"{root / DEV_JSON}: missing file (the dataset needs SQuAD v1.1's dev-v1.1.json)")
    if not (found[0] / VOCAB).is_file():
        raise HarnessError(
            f"{found[0] / VOCAB}: missing file; give the dataset as a directory or .tar holding dev-v1.1.json "
            "and the BERT model's vocab.txt (the vocab decides the features)"
        )
    return found[0]


def _check_model(path: Path) -> None:
    """A loadable ONNX graph with the official model's input and output names."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises its own untyped errors for bad files
        path.unlink(missing_ok=True)
        raise HarnessError(f"{path.name}: not a valid ONNX model ({str(exc).splitlines()[0][:160]})") from None
    ins, outs = {i.name for i in graph.input}, {o.name for o in graph.output}
    want_ins = {FAKE_QUANT_NAMES.get(n, n) for n in INPUTS} if "attention_mask" in ins else set(INPUTS)
    missing = sorted((want_ins - ins) | (set(OUTPUTS) - outs))
    if missing:
        raise HarnessError(
            f"{path.name}: no tensor {missing[0]!r}; the official bert model has inputs {', '.join(INPUTS)} "
            f"and outputs {', '.join(OUTPUTS)}"
        )


__all__ = [
    "FAKE_QUANT_NAMES",
    "INPUTS",
    "OUTPUTS",
    "OUTPUT_SPECS",
    "RESPONSE_DESCRIPTION",
    "SAMPLE_SPECS",
    "Bert",
    "accuracy_command",
    "build_model",
    "collate",
    "infer",
    "preprocess",
    "responses",
    "score",
    "synthesize_dataset",
]


def _check_vocab(path: Path, size: ModelSize) -> None:
    """The features' token ids index the model's word embeddings: a vocab.txt longer than the model
    of the run's size has rows (a real SQuAD set's 30,522 words and the small model's 1,024) is refused."""
    from .model import SIZES

    words = len(read_vocab(path))
    if words > SIZES[size].vocab:
        raise HarnessError(
            f"{path}: {words:,} words, more than the {size} synthetic BERT's {SIZES[size].vocab:,} embedding rows; "
            "with this dataset use model.synthetic.size: full or the real model"
        )
