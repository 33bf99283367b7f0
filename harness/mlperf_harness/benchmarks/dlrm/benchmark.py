"""dlrm on the benchmark contract: Criteo Terabyte day 23 samples (runs of rows), batched by rows.

Dataset: a directory (or a .tar of one) holding the reference's ``terabyte_processed_test.bin``
(or ``day_23_reordered.npz``, converted to it), optionally with the aggregation trace
``dlrm_trace_of_aggregated_samples.txt``: from a URL, S3, a PVC, or synthetic (labelled by the
FP32 synthetic model). Model: ``tb00_40M.onnx`` (the reference's ONNX export, with its external
weight files beside it), or the synthetic DLRM (SYNTHETIC: random weights, float16 tables):
``size: small`` tables of at most 1,000 rows, ``size: full`` the real row counts (44.8 GiB).
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ... import download
from ...backends.base import Backend, Tensors, TensorSpec
from ...errors import HarnessError
from ...fsutil import atomic_write_text
from ...samples import SampleWriter
from ...spec import ModelSize, Source
from ..base import MODEL, AccuracyReport, Batch, Benchmark
from . import accuracy as scoring
from . import batching, criteo
from .model import DENSE_INPUT, INDICES, OFFSETS, OUTPUT

MODEL_FILE = "tb00_40M.onnx"  # the name inside the reference's tb00_40M.onnx.tar
NPZ_FILE = "day_23_reordered.npz"
DATASET_JSON = criteo.DATASET_JSON


class Dlrm(Benchmark):
    name = "dlrm"
    capabilities = {"dataset": True, "model": True, "preprocess": True, "accuracy": True, "synthetic": True}
    cost_tensor = DENSE_INPUT  # a batch counts rows: a sample is a user's 100 to 700 ads
    device_resident = False  # ragged samples, and ``infer`` carries the labels past the model

    def inputs(self, variant: str) -> tuple[TensorSpec, ...]:
        return batching.SAMPLE_SPECS  # no int8 input path: the ids are integers anyway

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (batching.MODEL_OUTPUT,)

    def model_file(self, model_dir: Path) -> Path:
        return model_dir / MODEL_FILE

    def size_note(self, size: ModelSize) -> str:
        if size == "full":
            return (
                "full: SYNTHETIC random weights, the real MLPs and 26 tables of the real row counts "
                "(187,767,399 rows of dimension 128) in float16 (44.8 GiB, not the reference's 89.5 GiB of float32)"
            )
        return size

    # --- download-model -----------------------------------------------------------------------
    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        """Synthetic: the DLRM of the source's size (small: inline tables of at most 1,000 rows;
        full: the real row counts in float16, 44.8 GiB of external data)."""
        target = out_dir / MODEL_FILE
        if source.synthetic is not None:
            from .model import build_model

            build_model(target, source.synthetic.seed, source.synthetic.size)
            return target
        if source.pvc is not None:
            path = download.resolve_pvc(source.pvc)
            onnx_file = path if path.is_file() else _find(path, "*.onnx", "the DLRM ONNX model (tb00_40M.onnx)")
            _link_dir(onnx_file, target)  # 90 GiB of weights: linked where they are, not copied
        else:
            got = (
                download.fetch_https(source.https, out_dir / "_download", quiet=quiet)
                if source.https is not None
                else download.fetch_s3(source.s3, out_dir / "_download", quiet=quiet)  # type: ignore[arg-type]
            )
            if got.is_file() and tarfile.is_tarfile(got):
                got = download.unpack(got, out_dir / "unpacked", "the Criteo test data or the model's files")
            onnx_file = got if got.is_file() else _find(got, "*.onnx", "the DLRM ONNX model (tb00_40M.onnx)")
            _link_dir(onnx_file, target)
        _check_model(target)
        return target

    # --- download-data ------------------------------------------------------------------------
    def prepare_dataset(
        self, source: Source, out_dir: Path, *, size: ModelSize = "small", quiet: bool = False
    ) -> dict[str, object]:
        if source.synthetic is not None:
            return self._synthesize(source.synthetic.samples, source.synthetic.seed, size, out_dir)
        if source.pvc is not None:
            root = download.resolve_pvc(source.pvc)  # used in place: the test file is 14 GB
        else:
            got = (
                download.fetch_https(source.https, out_dir / "_download", quiet=quiet)
                if source.https is not None
                else download.fetch_s3(source.s3, out_dir / "_download", quiet=quiet)  # type: ignore[arg-type]
            )
            root = (
                download.unpack(got, out_dir / "criteo", "the Criteo test data or the model's files")
                if got.is_file() and tarfile.is_tarfile(got)
                else got
            )
        data_dir = _test_file_dir(root, out_dir)
        ds = criteo.preprocess(data_dir)
        facts: dict[str, object] = {
            "root": str(data_dir),
            "count": len(ds),
            "rows": int(ds.boundaries[-1]),
            "synthetic": False,
        }
        atomic_write_text(out_dir / DATASET_JSON, json.dumps(facts, indent=2) + "\n")
        return facts

    def _synthesize(self, n: int, seed: int, size: ModelSize, out_dir: Path) -> dict[str, object]:
        """The synthetic test file, labelled by the FP32 model ``download-model`` makes for the
        same seed and size, so FP32 scores AUC 100 %: built here again (it is deterministic) with
        only the table rows the samples use (``used_rows``), not a second copy of its tables. At
        full size it still generates every chunk those rows fall in: 2 samples took 206 s here
        (125 CPU-seconds on two busy cores, one thread a table; peak RSS 280 MB, 2026-12-04)."""
        from .model import build_model, kept_rows, table_sizes
        from .synthetic import synthesize_dataset, used_rows

        data_dir = out_dir / "criteo"
        kept = kept_rows(seed, table_sizes(size), used_rows(seed, n, table_sizes(size)))
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".labeller.") as tmp:
            model_path = build_model(Path(tmp) / MODEL_FILE, seed, size, keep=kept)
            facts = synthesize_dataset(data_dir, seed, n, model_path, kept=kept)
        facts = {**facts, "root": str(data_dir), "count": n}
        atomic_write_text(out_dir / DATASET_JSON, json.dumps(facts, indent=2) + "\n")
        return facts

    # --- preprocess ---------------------------------------------------------------------------
    def preprocess(
        self, dataset_dir: Path, out_dir: Path, variant: str, *, size: ModelSize = "small", quiet: bool = False
    ) -> list[Path]:
        marker = dataset_dir / DATASET_JSON
        if not marker.is_file():
            raise HarnessError(f"{marker}: missing; run download-data first")
        facts = json.loads(marker.read_text())
        root = Path(facts["root"])
        # Ids modulo the small model's 1,000-row tables, so real data runs on it (a no-op for its own
        # synthetic data); full leaves them as the real model (and the full synthetic one) takes them.
        from .model import table_sizes

        ds = criteo.preprocess(root, table_sizes=table_sizes("small") if size == "small" else None)
        synthetic = bool(facts.get("synthetic"))
        with SampleWriter(
            out_dir, self.inputs(variant), len(ds), synthetic=synthetic, rows=int(ds.boundaries[-1])
        ) as w:
            for sample in ds:
                w.append(sample)
            # The grouping, as the reference's trace: what --aggregation-trace-file reads.
            atomic_write_text(out_dir / criteo.TRACE_FILE, criteo.trace_text(ds.boundaries))
            return [*w.close(), out_dir / criteo.TRACE_FILE]

    # --- batching, inference, responses ---------------------------------------------------------
    def collate(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {**batching.collate(samples), batching.LABEL: batching.labels(samples)}

    def infer(self, parts: Mapping[str, Backend], feeds: Tensors) -> dict[str, np.ndarray]:
        return batching.infer(parts[MODEL].predict, dict(feeds))

    def example(self, variant: str, n: int) -> dict[str, np.ndarray]:
        """``n`` one-row samples as the model takes them (offsets and indices are (26, n))."""
        zero = {DENSE_INPUT: np.zeros((1, criteo.DENSE), np.float32), INDICES: np.zeros((1, criteo.SPARSE), np.int32)}
        return batching.collate([zero] * n)

    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        rows = batch.costs if batch.costs is not None else np.ones(len(batch), dtype=np.int64)
        return batching.responses(outputs, rows)

    # --- accuracy ---------------------------------------------------------------------------------
    def accuracy(self, accuracy_log: Path, preprocessed_dir: Path) -> AccuracyReport:
        metrics, line = scoring.score(accuracy_log)
        counts = {k: int(metrics[k]) for k in ("good", "total", "queries")}
        figures = {k: float(metrics[k]) for k in ("AUC", "accuracy")}
        return AccuracyReport("AUC", figures, line, counts)

    def response_description(self) -> str:
        return (
            "per sample (one user's run of 100 to 700 rows), each row's [prediction, label] as two float32, "
            "as the reference's main.py logs them, so accuracy-dlrm.py reads the labels from the log "
            "(its default, --dtype float32)"
        )

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        # mlcommons/inference, recommendation/dlrm/pytorch/tools/accuracy-dlrm.py
        return scoring.accuracy_command(accuracy_log)


def _find(root: Path, pattern: str, what: str) -> Path:
    found = sorted(root.rglob(pattern))
    if not found:
        raise HarnessError(f"{root}: no {pattern} file in it; it must hold {what}")
    return found[0]


def _link_dir(onnx_file: Path, target: Path) -> None:
    """``target`` (the model's name in the model directory) and every file beside ``onnx_file``
    (its external weights, found by relative name) as symbolic links."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for f in onnx_file.parent.iterdir():
        dest = target if f == onnx_file else target.parent / f.name
        if f.is_file() and not f.name.startswith(".") and dest != f:
            dest.unlink(missing_ok=True)
            os.symlink(f.resolve(), dest)


def _test_file_dir(root: Path, out_dir: Path) -> Path:
    """The directory holding ``terabyte_processed_test.bin``: found under ``root``, or written into
    ``out_dir`` from ``day_23_reordered.npz`` as the reference's converter does."""
    if root.is_file():
        if root.name == criteo.TEST_FILE:
            return root.parent
        if root.suffix == ".npz":
            criteo.npz_to_test_bin(root, out_dir / criteo.TEST_FILE)
            return out_dir
        raise HarnessError(f"{root}: neither {criteo.TEST_FILE} nor {NPZ_FILE} (nor a .tar of them)")
    found = sorted(root.rglob(criteo.TEST_FILE))
    if found:
        return found[0].parent
    npz = sorted(root.rglob(NPZ_FILE))
    if npz:
        criteo.npz_to_test_bin(npz[0], out_dir / criteo.TEST_FILE)
        return out_dir
    raise HarnessError(
        f"{root}: no {criteo.TEST_FILE} or {NPZ_FILE} in it; give the Criteo Terabyte day 23 test file "
        "(the reference's binary loader's input)"
    )


def _check_model(path: Path) -> None:
    """The reference export's interface, read without its (external) weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's and onnx's errors have no common base
        raise HarnessError(f"{path.name}: not a readable ONNX model ({str(exc).splitlines()[0][:160]})") from None
    names = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    missing = [n for n in (DENSE_INPUT, OFFSETS, INDICES, OUTPUT) if n not in names]
    if missing:
        raise HarnessError(
            f"{path.name}: no {', '.join(missing)}; the DLRM model must be the reference's ONNX export "
            "(inputs dense_x, offsets, indices; output pred)"
        )
