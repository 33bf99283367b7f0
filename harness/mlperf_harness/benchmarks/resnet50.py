"""ResNet-50 on ImageNet 2012 validation: the benchmark that runs end to end.

Dataset: a directory (or a .tar/.tar.gz of one) holding the validation JPEGs and ``val_map.txt``
(``<file> <label>`` per line, labels 0..999): from a URL, S3, a PVC (the user supplies it, as
ImageNet's licence requires), or synthetic. Model: resnet50_v1.onnx (1001 classes, background at
0, so a prediction maps to label ``argmax - 1``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from .. import download
from ..backends.base import TensorSpec
from ..errors import HarnessError
from ..fsutil import atomic_write_text, temp_path_for
from ..samples import SampleStore, SampleWriter
from ..spec import ModelSize, Source
from .base import AccuracyReport, Batch, Benchmark
from .synthetic_imagenet import synthetic_image

MODEL_URL = "https://zenodo.org/record/2592612/files/resnet50_v1.onnx"
MODEL_FILE = "resnet50_v1.onnx"
MEANS = np.array([123.68, 116.78, 103.94], dtype=np.float32)
SIZE = 224
CROP_PERCENT = 87.5  # the centre 224 crop is 87.5 % of the resized short side (256)
# int8 inputs: symmetric per-tensor scale covering mean-subtracted pixels (-124 .. 152).
INT8_SCALE = 152.0 / 127.0
LABEL_OFFSET = -1  # resnet50_v1.onnx predicts 1001 classes, background first
# Synthetic sets up to this size are stored as JPEG files; larger ones are regenerated on demand.
STORE_LIMIT = 4096
VAL_MAP = "val_map.txt"
# MLPerf's calibration images (mlcommons/inference calibration/ImageNet/): 500 validation file names.
CALIBRATION_LIST = "cal_image_list_option_1.txt"
CALIBRATION_SYNTHETIC = 500  # synthetic runs calibrate on their first samples, as many as the list has
CALIBRATION_BATCH = 100
DATASET_JSON = "dataset.json"


def progress(quiet: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=True,
    )


def preprocess_image(img: np.ndarray) -> np.ndarray:
    """The reference's ``pre_process_vgg``: aspect-preserving resize of the short side to 256 with
    OpenCV's INTER_AREA, centre crop 224, mean subtraction, HWC -> CHW; float32. ``img`` is RGB."""
    import cv2

    h, w = img.shape[:2]
    short = int(100.0 * SIZE / CROP_PERCENT)  # 256
    if h > w:
        nw, nh = short, int(short * h / w)
    else:
        nh, nw = short, int(short * w / h)
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    top, left = int((nh - SIZE) / 2), int((nw - SIZE) / 2)
    arr = np.asarray(resized[top : top + SIZE, left : left + SIZE], dtype=np.float32) - MEANS
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def quantize(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x / INT8_SCALE), -128, 127).astype(np.int8)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """An RGB image as JPEG bytes, with the library that decodes it again."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buf)


def decode(path: Path) -> np.ndarray:
    """The reference's decode (``cv2.imread``, then BGR -> RGB), with errors that name the file."""
    import cv2

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing image file") from None
    # libjpeg decodes a truncated JPEG with a warning and grey rows; the end-of-image marker tells.
    truncated = data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]
    img = None if truncated else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise HarnessError(f"{path}: corrupt or truncated image (OpenCV cannot decode it)")
    return np.asarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def read_val_map(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise HarnessError(f"{path}: missing file (ImageNet val_map.txt: '<file> <label>' per line)")
    entries: list[tuple[str, int]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise HarnessError(f"{path}: line {n} is not '<file> <label>': {line[:80]!r}")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise HarnessError(f"{path}: empty")
    return entries


INPUT, OUTPUT = "input_tensor:0", "ArgMax:0"  # resnet50_v1.onnx's names


class ResNet50(Benchmark):
    name = "resnet50"
    capabilities = {"dataset": True, "model": True, "preprocess": True, "accuracy": True, "synthetic": True}

    def inputs(self, variant: str) -> tuple[TensorSpec, ...]:
        if variant == "int8":
            return (TensorSpec(INPUT, (3, SIZE, SIZE), "int8", scale=INT8_SCALE),)
        return (TensorSpec(INPUT, (3, SIZE, SIZE), "float32"),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec(OUTPUT, (), "int64"),)

    def model_file(self, model_dir: Path) -> Path:
        return model_dir / MODEL_FILE

    def size_note(self, size: ModelSize) -> str:
        return f"{size}: the real ResNet-50 v1.5 either way (it runs on a CPU; there is no smaller variant)"

    # --- download-model -----------------------------------------------------------------------
    def prepare_model(self, source: Source, out_dir: Path, *, quiet: bool = False) -> Path:
        target = out_dir / MODEL_FILE
        if source.synthetic is not None:  # size small and full alike: the real architecture
            from . import synthetic_resnet

            with temp_path_for(target) as tmp:
                synthetic_resnet.write(tmp, source.synthetic.seed)
            return target
        download.fetch_file(source, out_dir, MODEL_FILE, quiet=quiet)
        _check_onnx(target)
        return target

    # --- download-data ------------------------------------------------------------------------
    def prepare_dataset(
        self, source: Source, out_dir: Path, *, size: ModelSize = "small", quiet: bool = False
    ) -> dict[str, object]:
        if source.synthetic is not None:
            return self._synthesize(source.synthetic.samples, source.synthetic.seed, out_dir, quiet)
        if source.pvc is not None:
            root = download.resolve_pvc(source.pvc)  # used in place: ImageNet is large
        else:
            if source.https:
                got = download.fetch_https(source.https, out_dir / "_download", quiet=quiet)
            else:
                assert source.s3 is not None  # a Source holds exactly one kind
                got = download.fetch_s3(source.s3, out_dir / "_download", quiet=quiet)
            root = (
                download.unpack(got, out_dir / "imagenet", "the ImageNet validation images") if got.is_file() else got
            )
        root = _find_val_map_root(root)
        entries = read_val_map(root / VAL_MAP)
        missing = [f for f, _ in entries[:10] + entries[-10:] if not (root / f).is_file()]
        if missing:
            raise HarnessError(f"{root / missing[0]}: missing image listed in {root / VAL_MAP}")
        facts = {"layout": "files", "root": str(root), "count": len(entries), "synthetic": False}
        atomic_write_text(out_dir / DATASET_JSON, json.dumps(facts, indent=2))
        return facts

    def _synthesize(self, n: int, seed: int, out_dir: Path, quiet: bool) -> dict[str, object]:
        """Generate images, then label each with the FP32 synthetic model's own prediction, so an
        FP32 accuracy run scores 100 % for real. The model is the one ``download-model`` makes
        for the same seed."""
        import onnxruntime as ort

        from . import synthetic_resnet

        stored = n <= STORE_LIMIT
        images_dir = out_dir / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        model = synthetic_resnet.build(seed, synthetic_resnet.calibration_images(seed))
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names: list[str] = []
        labels: list[int] = []
        batch: list[np.ndarray] = []

        def flush() -> None:
            if batch:
                pred = sess.run([synthetic_resnet.ARGMAX], {synthetic_resnet.INPUT: np.stack(batch)})[0]
                labels.extend(int(p) + LABEL_OFFSET for p in pred)
                batch.clear()

        with progress(quiet) as bar:
            task = bar.add_task("synthetic ImageNet (labelled by the FP32 model)", total=n)
            for i in range(n):
                name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
                img = synthetic_image(seed, i)
                if stored:
                    (images_dir / name).write_bytes(encode_jpeg(img))
                    img = decode(images_dir / name)  # label what preprocess will read back
                names.append(name)
                batch.append(preprocess_image(img))
                if len(batch) == 16:
                    flush()
                bar.advance(task)
            flush()
        val_map = "".join(f"{f} {lab}\n" for f, lab in zip(names, labels, strict=True))
        atomic_write_text(images_dir / VAL_MAP, val_map)
        facts: dict[str, object] = {
            "layout": "files" if stored else "generated",
            "root": str(images_dir),
            "count": n,
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
        entries = read_val_map(root / VAL_MAP)
        n = len(entries)
        generated = facts["layout"] == "generated"

        def load(i: int) -> np.ndarray:
            img = synthetic_image(int(facts["seed"]), i) if generated else decode(root / entries[i][0])
            return preprocess_image(img)

        (spec,) = self.inputs(variant)
        synthetic = bool(facts.get("synthetic"))
        with SampleWriter(out_dir, [spec], n, layout="NCHW", synthetic=synthetic) as store:
            with progress(quiet) as bar, ThreadPoolExecutor(max_workers=2) as pool:
                task = bar.add_task(f"preprocess {n} images ({variant})", total=n)
                for x in pool.map(load, range(n)):
                    store.append({INPUT: quantize(x) if variant == "int8" else x})
                    bar.advance(task)
            atomic_write_text(out_dir / VAL_MAP, (root / VAL_MAP).read_text())
            return [*store.close(), out_dir / VAL_MAP]

    # --- calibration ---------------------------------------------------------------------------
    def calibration_batches(self, dataset_dir: Path, store: SampleStore) -> list[np.ndarray]:
        """The images of MLPerf's calibration list (``cal_image_list_option_1.txt`` beside the
        dataset's ``val_map.txt``), preprocessed as the run's samples; a SYNTHETIC dataset has no
        such list: its first samples instead."""
        facts = json.loads((dataset_dir / DATASET_JSON).read_text())
        if facts.get("synthetic"):
            rows = list(range(min(CALIBRATION_SYNTHETIC, store.count)))
        else:
            root = Path(facts["root"])
            listed = root / CALIBRATION_LIST
            if not listed.is_file():
                raise HarnessError(
                    f"{listed}: missing MLPerf calibration list; put mlcommons/inference's "
                    f"calibration/ImageNet/{CALIBRATION_LIST} beside {VAL_MAP}"
                )
            index = {name: i for i, (name, _) in enumerate(read_val_map(root / VAL_MAP))}
            names = listed.read_text().split()
            unknown = [n for n in names if n not in index]
            if unknown:
                raise HarnessError(f"{listed}: {unknown[0]} (and {len(unknown) - 1} more) not in {VAL_MAP}")
            rows = [index[n] for n in names]
        data = store.fixed[INPUT]
        return [np.asarray(data[rows[i : i + CALIBRATION_BATCH]]) for i in range(0, len(rows), CALIBRATION_BATCH)]

    # --- responses and accuracy -----------------------------------------------------------------
    def responses(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> np.ndarray:
        # ArgMax output (N,) int64 -> int32 ImageNet label, as NVIDIA's harness responds.
        out = outputs[OUTPUT]
        return (out.reshape(len(out)) + LABEL_OFFSET).astype(np.int32)

    def accuracy(self, accuracy_log: Path, dataset_dir: Path) -> AccuracyReport:
        return imagenet_accuracy(accuracy_log, dataset_dir / VAL_MAP)

    def response_description(self) -> str:
        return (
            "one int32 per sample, the ImageNet class 0..999 (the model's 1001-way ArgMax less 1, "
            "as NVIDIA's harness responds), so the script needs `--dtype int32`"
        )

    def accuracy_command(self, accuracy_log: Path, data_dir: Path) -> str:
        # mlcommons/inference, vision/classification_and_detection/tools/accuracy-imagenet.py
        return (
            "python3 vision/classification_and_detection/tools/accuracy-imagenet.py "
            f"--mlperf-accuracy-file {accuracy_log} --imagenet-val-file {data_dir / VAL_MAP} --dtype int32"
        )


def imagenet_accuracy(accuracy_log: Path, val_map: Path, dtype: str = "int32") -> AccuracyReport:
    """accuracy-imagenet.py's computation: de-duplicate by qsl_idx, compare the first value of
    each response with the label, print ``accuracy=..%, good=.., total=..``."""
    labels = [lab for _, lab in read_val_map(val_map)]
    try:
        results = json.loads(accuracy_log.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{accuracy_log}: missing accuracy log") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{accuracy_log}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    seen: set[int] = set()
    good = 0
    for entry in results:
        idx = int(entry["qsl_idx"])
        if idx in seen:
            continue
        seen.add(idx)
        data = np.frombuffer(bytes.fromhex(entry["data"]), dtype=np.dtype(dtype))
        if data.size and int(data[0]) == labels[idx]:
            good += 1
    total = len(seen)
    value = 100.0 * good / total if total else 0.0
    line = f"accuracy={value:.3f}%, good={good}, total={total}"
    return AccuracyReport("accuracy", {"accuracy": value}, line, {"good": good, "total": total})


def _find_val_map_root(root: Path) -> Path:
    if (root / VAL_MAP).is_file():
        return root
    found = sorted(root.rglob(VAL_MAP))
    if not found:
        raise HarnessError(f"{root / VAL_MAP}: missing file (the dataset needs ImageNet's val_map.txt)")
    return found[0].parent


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise HarnessError(f"{path.name}: not a valid ONNX model ({str(exc).splitlines()[0][:160]})") from None
