"""COCO 2017 val for SSD-ResNet34: the dataset layout, the reference's preprocessing and a synthetic set.

Layout (as the reference's ``--dataset-path`` and accuracy-coco.py's ``--coco-dir`` expect):
``val2017/<12-digit id>.jpg`` and ``annotations/instances_val2017.json``. The QSL index of an image is
its position in the JSON's ``images`` list, which is how accuracy-coco.py maps responses back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import HarnessError
from ...fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from . import model as ssd_model

ANNOTATIONS = Path("annotations") / "instances_val2017.json"
IMAGES = "val2017"
# Where the real files come from (the user may also supply them on S3 or a PVC).
IMAGES_URL = "http://images.cocodataset.org/zips/val2017.zip"
ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
MODEL_URL = "https://zenodo.org/record/3228411/files/resnet34-ssd1200.onnx"
MODEL_FILE = "resnet34-ssd1200.onnx"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# The 80 COCO detection categories (id, name, supercategory); ids 12, 26, 29, 30, 45, 66, 68, 69,
# 71 and 83 are unused. The model's label k (1..80) is the k-th of these, in id order.
_SUPER = {
    "person": "person",
    "bicycle car motorcycle airplane bus train truck boat": "vehicle",
    "traffic_light fire_hydrant stop_sign parking_meter bench": "outdoor",
    "bird cat dog horse sheep cow elephant bear zebra giraffe": "animal",
    "backpack umbrella handbag tie suitcase": "accessory",
    "frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket": "sports",
    "bottle wine_glass cup fork knife spoon bowl": "kitchen",
    "banana apple sandwich orange broccoli carrot hot_dog pizza donut cake": "food",
    "chair couch potted_plant bed dining_table toilet": "furniture",
    "tv laptop mouse remote keyboard cell_phone": "electronic",
    "microwave oven toaster sink refrigerator": "appliance",
    "book clock vase scissors teddy_bear hair_drier toothbrush": "indoor",
}
_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
CATEGORIES: list[dict[str, Any]] = [
    {"supercategory": sup, "id": cid, "name": name.replace("_", " ")}
    for (name, sup), cid in zip(
        [(n, s) for names, s in _SUPER.items() for n in names.split()],
        [i for i in range(1, 91) if i not in _UNUSED_IDS],
        strict=True,
    )
]
assert len(CATEGORIES) == ssd_model.CLASSES - 1


# --- reading -------------------------------------------------------------------------------------
def load_annotations(dataset_dir: Path) -> dict[str, Any]:
    """instances_val2017.json, checked for the fields the pipeline and accuracy-coco.py read."""
    path = dataset_dir / ANNOTATIONS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing file (COCO's annotations_trainval2017.zip has it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(
            f"{path}: not valid JSON ({exc}); the file is truncated or corrupt, fetch it again"
        ) from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: not a COCO annotation file (expected a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise HarnessError(f"{path}: missing field {key!r} (not a COCO instances file)")
    for n, img in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "height", "width") if k not in img]
        if missing:
            raise HarnessError(f"{path}: images[{n}] lacks {', '.join(missing)} (not a COCO instances file)")
    if not data["images"]:
        raise HarnessError(f"{path}: no images listed")
    return data


def decode(path: Path) -> np.ndarray:
    """``cv2.imread`` as the reference calls it (BGR uint8), with errors that name the file."""
    import cv2

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing image listed in {ANNOTATIONS}; unpack val2017.zip beside it") from None
    # libjpeg decodes a truncated JPEG with a warning and grey rows; the end-of-image marker tells.
    truncated = data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]
    img = None if truncated else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise HarnessError(f"{path}: corrupt or truncated image (OpenCV cannot decode it); fetch it again")
    return np.asarray(img)


def preprocess_image(bgr: np.ndarray, size: int = ssd_model.IMAGE_SIZE) -> np.ndarray:
    """The reference's ``pre_process_coco_resnet34`` for the ONNX model (coco-1200, NCHW): float32,
    BGR -> RGB, bilinear resize to size x size, /255, ImageNet mean/std, HWC -> CHW."""
    import cv2

    img: np.ndarray = np.array(bgr, dtype=np.float32)
    if img.ndim < 3 or img.shape[2] != 3:
        img = np.asarray(cv2.cvtColor(img, cv2.COLOR_GRAY2RGB))
    img = np.asarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    img = np.asarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR))
    img = (img / 255.0 - MEAN) / STD
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def preprocess(
    dataset_dir: Path, image_size: int = ssd_model.IMAGE_SIZE, count: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Samples in QSL order (the annotation file's ``images`` order): ``image`` (3, S, S) float32
    (the QSL index each response carries first comes from LoadGen's query, not the sample).
    ``image_size`` is the model's input (1200; 400 for the small synthetic model)."""
    images = load_annotations(dataset_dir)["images"]
    for info in images[:count]:
        x = preprocess_image(decode(dataset_dir / IMAGES / info["file_name"]), image_size)
        yield {ssd_model.INPUT: x}


def find_root(directory: Path) -> Path:
    """The folder holding ``annotations/`` and ``val2017/`` (zips unpack one level down or not)."""
    if (directory / ANNOTATIONS).is_file():
        return directory
    found = sorted(p.parent.parent for p in directory.rglob("instances_val2017.json") if p.parent.name == "annotations")
    if not found:
        raise HarnessError(f"{directory / ANNOTATIONS}: missing file (the COCO dataset needs it beside val2017/)")
    return found[0]


# --- synthetic -----------------------------------------------------------------------------------
_SIZES = ((480, 640), (640, 480), (427, 640), (640, 427), (480, 640), (375, 500), (360, 640), (612, 612))


def synthetic_image(seed: int, index: int) -> np.ndarray:
    """A BGR uint8 image of a COCO-like size: a smooth background with a few filled shapes."""
    import cv2

    rng = np.random.default_rng([seed, index])
    h, w = _SIZES[int(rng.integers(len(_SIZES)))]
    grid = rng.uniform(0, 255, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.float32)
    img = np.asarray(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC))
    for _ in range(int(rng.integers(2, 9))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        ax, ay = int(rng.integers(w // 16, w // 3)), int(rng.integers(h // 16, h // 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (cx - ax, cy - ay), (cx + ax, cy + ay), colour, thickness=-1)
        else:
            cv2.ellipse(img, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, colour, thickness=-1)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)  # texture
    return np.clip(img, 0, 255).astype(np.uint8)


def synthesize_dataset(
    out_dir: Path, seed: int, n: int, model_path: Path, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> dict[str, Any]:
    """A COCO val2017-format set of ``n`` synthetic JPEGs whose annotations are the FP32 synthetic
    model's own detections, as the reference logs them (score >= 0.5) and accuracy-coco.py maps
    them to pixels: scoring the FP32 model's responses then gives mAP 1.0 with pycocotools.
    ``providers``: onnxruntime's, for a full-size set on a GPU (labels then follow that device's
    FP32 arithmetic)."""
    import cv2
    import onnxruntime as ort

    from .accuracy import coco_detections
    from .pipeline import infer, responses

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), opts, providers=list(providers))
    size = ssd_model.image_size_of(model_path)
    (out_dir / ANNOTATIONS).unlink(missing_ok=True)  # a set is complete only once it is rewritten

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(ssd_model.OUTPUTS, sess.run(list(ssd_model.OUTPUTS), feed), strict=True))

    rng = np.random.default_rng([seed, 0xC0C0])
    # Distinct ids in COCO's range; image i has the same id whatever n is.
    ids = [int(i) + 1 for i in rng.permutation(581929)[:n]]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    inv_map = [0] + [c["id"] for c in CATEGORIES]
    for idx, image_id in enumerate(ids):
        name = f"{image_id:012d}.jpg"
        ok, buf = cv2.imencode(".jpg", synthetic_image(seed, idx), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        atomic_write_bytes(out_dir / IMAGES / name, bytes(buf))
        bgr = decode(out_dir / IMAGES / name)  # label what preprocess will read back
        h, w = bgr.shape[:2]
        info = {"license": 1, "file_name": name, "coco_url": f"synthetic:{IMAGES}/{name}", "height": h, "width": w}
        images.append({**info, "date_captured": "2017-09-01 00:00:00", "flickr_url": "", "id": image_id})
        outputs = infer(run, {ssd_model.INPUT: preprocess_image(bgr, size)[None]})
        (response,) = responses(outputs, [idx])
        dets = coco_detections(response, images[-1], inv_map)
        # pycocotools' mAP counts at most 100 detections per image and class, by score.
        per_class: dict[int, int] = {}
        for det in dets:
            per_class[det["category_id"]] = per_class.get(det["category_id"], 0) + 1
            if per_class[det["category_id"]] > 100:
                continue
            x, y, bw, bh = det["bbox"]
            annotations.append(
                {
                    "segmentation": [[x, y, x, y + bh, x + bw, y + bh, x + bw, y]],
                    "area": bw * bh,
                    "iscrowd": 0,
                    "image_id": image_id,
                    "bbox": det["bbox"],
                    "category_id": det["category_id"],
                    "id": len(annotations) + 1,
                }
            )
    note = f"SYNTHETIC: generated images labelled by the FP32 synthetic SSD-ResNet34 (seed {seed}), not COCO"
    data = {
        "info": {
            "description": note,
            "version": "1.0",
            "year": 2017,
            "contributor": "mlperf-operator",
            "date_created": "2017/09/01",
        },
        "licenses": [{"url": "", "id": 1, "name": "SYNTHETIC (generated, no licence terms)"}],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    atomic_write_text(out_dir / "README.txt", note + f"\n{n} images in {IMAGES}/, boxes in {ANNOTATIONS}.\n")
    atomic_write_json(out_dir / ANNOTATIONS, data)  # last: its presence means the set is complete
    return {"count": n, "synthetic": True, "seed": seed, "annotations": len(annotations), "image_size": size}
