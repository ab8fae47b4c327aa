"""DeepForest's conversion: the source scenes and their pins, the tiling, the COCO json and
the checks of what was written (:mod:`lgdkd.data.deepforest` registers and loads the set)."""

import importlib.util
import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import cv2
import numpy as np

from .generated import sha256_file

logger = logging.getLogger(__name__)


DEEPFOREST_WHEEL = "deepforest==2.1.0"
CLASS_NAMES = ["Tree"]
TILE_SIZE = 400
TRAIN_STRIDE = 300
# A clipped box is kept when its visible part keeps at least this fraction of its area ...
MIN_VISIBLE_FRACTION = 0.5
# ... and is at least this many pixels wide and high.
MIN_BOX_SIDE = 2
DEEPFOREST_SPLITS = ("train", "val")
# Folder under the data sets root; bump the format tag in the json's "info" and the pins
# below together whenever the conversion changes.
FOLDER = "deepforest"
FORMAT_VERSION = "lgdkd-deepforest-tiles-v1"


@dataclass(frozen=True)
class _Scene:
    """One annotated scene of the wheel: ``<stem>.png`` + ``<stem>.xml`` and their sha256."""

    stem: str
    split: str
    image_sha256: str
    xml_sha256: str


_SCENES = (
    _Scene(
        "2019_YELL_2_528000_4978000_image_crop2",
        "train",
        "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767",
        "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11",
    ),
    _Scene(
        "2019_YELL_2_541000_4977000_image_crop",
        "val",
        "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131",
        "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631",
    ),
    _Scene(
        "OSBS_029",
        "val",
        "d9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee",
        "1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c",
    ),
    _Scene(
        "SOAP_061",
        "val",
        "256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424",
        "4833280af75fd9c47965a93e38945282835e9e725cac412bdb9469d63480947c",
    ),
)
# Labels found in the scenes' XML files; every one becomes "Tree".
_SOURCE_LABELS = ("Tree", "Alive", "Dead")

# sha256 of the generated json files (canonical bytes of _dump_json). Tiles are not pinned:
# their PNG bytes depend on the zlib build, their pixels do not.
JSON_SHA256 = {
    "train": "ac492b57162b6ca20605149c52873f266e5a873bb0d9e50b01d2ca08e2bf858d",
    "val": "7d8a24a06df35bbe1844f1cf6789ea71d354e60eb559a1dd7d076c1fb63731d8",
}


class DeepForestError(RuntimeError):
    """The DeepForest set cannot be prepared or does not match what this code generates."""


def deepforest_source_dir():
    """The ``data/`` folder of the installed ``deepforest`` wheel (never imported)."""
    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.submodule_search_locations:
        raise DeepForestError(
            "The DeepForest data set is built from the 'deepforest' wheel, which is not "
            f"installed. Install it with `bash tools/setup_env.sh`, or with "
            f"`pip install --no-deps {DEEPFOREST_WHEEL}` (only its data files are used)."
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def _installed_version():
    try:
        from importlib.metadata import version

        return version("deepforest")
    except Exception:  # not installed, or installed without metadata
        return "unknown"


# --------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------
def sliding_windows(length, size, stride):
    """Windows ``[start, end)`` of ``size`` px every ``stride`` px covering ``[0, length)``.

    The last window is moved back to end exactly at ``length``; a side shorter than ``size``
    gives one window ``[0, length)``.
    """
    if length <= size:
        return [(0, length)]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return [(s, s + size) for s in starts]


def grid_windows(length, size):
    """``ceil(length / size)`` non-overlapping windows of (nearly) equal width covering
    ``[0, length)``, each at most ``size`` px."""
    n = -(-length // size)
    edges = [(i * length) // n for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def clip_boxes_to_tile(boxes, tile):
    """Boxes of a scene that belong to one tile, in tile coordinates.

    Args:
        boxes: float array (N, 4) of XYXY boxes in scene pixels (pixel edges).
        tile: (x0, y0, x1, y1) of the tile in scene pixels.

    Returns:
        (kept, indices): float array (M, 4) of XYXY boxes relative to the tile's corner and
        the (M,) indices of those boxes in ``boxes``. A box is kept when its clipped part has
        >= MIN_VISIBLE_FRACTION of its area and sides >= MIN_BOX_SIDE.
    """
    x0, y0, x1, y1 = tile
    clipped = np.stack(
        [
            np.maximum(boxes[:, 0], x0),
            np.maximum(boxes[:, 1], y0),
            np.minimum(boxes[:, 2], x1),
            np.minimum(boxes[:, 3], y1),
        ],
        axis=1,
    )
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = np.clip(w, 0, None) * np.clip(h, 0, None)
    keep = (w >= MIN_BOX_SIDE) & (h >= MIN_BOX_SIDE) & (visible >= MIN_VISIBLE_FRACTION * area)
    indices = np.nonzero(keep)[0]
    return clipped[indices] - np.array([x0, y0, x0, y0], dtype=clipped.dtype), indices


def _read_voc(xml_path):
    """(width, height, boxes (N, 4) float64 XYXY, labels list[str]) of a VOC XML file."""
    root = ET.parse(xml_path).getroot()
    width = int(root.findtext("size/width"))
    height = int(root.findtext("size/height"))
    boxes, labels = [], []
    for obj in root.iter("object"):
        labels.append(obj.findtext("name").strip())
        boxes.append([float(obj.findtext("bndbox/" + k)) for k in ("xmin", "ymin", "xmax", "ymax")])
    return width, height, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels


def _check_sources(source_dir):
    """Verify the sha256 of every scene file read; a mismatch raises DeepForestError."""
    for scene in _SCENES:
        for ext, expected in ((".png", scene.image_sha256), (".xml", scene.xml_sha256)):
            path = os.path.join(source_dir, scene.stem + ext)
            if not os.path.isfile(path):
                raise DeepForestError(
                    f"DeepForest source file {path} is missing (installed deepforest "
                    f"{_installed_version()}; this code reads {DEEPFOREST_WHEEL}). Reinstall "
                    f"with `pip install --no-deps --force-reinstall {DEEPFOREST_WHEEL}`."
                )
            actual = sha256_file(path)
            if actual != expected:
                raise DeepForestError(
                    f"DeepForest source file {path} has sha256 {actual}, expected {expected}: "
                    f"the installed deepforest wheel ({_installed_version()}) is not the one "
                    f"this conversion is pinned to ({DEEPFOREST_WHEEL}), or the file was "
                    f"modified. Reinstall with "
                    f"`pip install --no-deps --force-reinstall {DEEPFOREST_WHEEL}`."
                )


def _dump_json(data):
    """Canonical json bytes (key order, separators and float text are fixed)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def write_tiles(coco, image, boxes, labels, stem, xs, ys, image_dir):
    """Cut ``image`` (a scene) into the tiles ``xs`` x ``ys`` (lists of ``[start, end)``
    windows), write each to ``image_dir`` as ``<stem>_x<x0>_y<y0>.png`` and append it and its
    boxes (:func:`clip_boxes_to_tile`; ``labels`` kept as ``source_label``) to the COCO dict
    ``coco``, ids continuing from what it holds."""
    for ty0, ty1 in ys:
        for tx0, tx1 in xs:
            file_name = f"{stem}_x{tx0:04d}_y{ty0:04d}.png"
            if not cv2.imwrite(os.path.join(image_dir, file_name), image[ty0:ty1, tx0:tx1]):
                raise DeepForestError(f"could not write {os.path.join(image_dir, file_name)}")
            image_id = len(coco["images"]) + 1
            coco["images"].append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "width": tx1 - tx0,
                    "height": ty1 - ty0,
                    "scene": stem,
                    "scene_box": [tx0, ty0, tx1, ty1],
                }
            )
            kept, indices = clip_boxes_to_tile(boxes, (tx0, ty0, tx1, ty1))
            for (bx0, by0, bx1, by1), k in zip(kept.tolist(), indices.tolist()):
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [bx0, by0, bx1 - bx0, by1 - by0],
                        "area": (bx1 - bx0) * (by1 - by0),
                        "iscrowd": 0,
                        "source_label": labels[k],
                    }
                )


def convert_deepforest(out_dir, source_dir=None):
    """Tile the wheel's scenes and write the two COCO sets into ``out_dir`` (no locking).

    Deterministic: the same sources give byte-identical json files. The sources' sha256 are
    checked first; the json checksums are not (see :func:`verify_deepforest`).

    Args:
        out_dir: folder that receives ``annotations/``, ``train/`` and ``val/``.
        source_dir: the wheel's ``data/`` folder (default: :func:`deepforest_source_dir`).

    Returns:
        dict split -> path of the json file.
    """
    source_dir = source_dir or deepforest_source_dir()
    _check_sources(source_dir)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    sets = {
        split: {
            "info": {
                "description": "DeepForest tree crowns (NEON RGB, 0.1 m/px) tiled by lgdkd",
                "version": FORMAT_VERSION,
                "source": DEEPFOREST_WHEEL,
                "license": "imagery: NEON, CC0 1.0; annotations: DeepForest, MIT",
            },
            "categories": [{"id": 1, "name": CLASS_NAMES[0], "supercategory": "plant"}],
            "images": [],
            "annotations": [],
        }
        for split in DEEPFOREST_SPLITS
    }
    for scene in _SCENES:
        image_dir = os.path.join(out_dir, scene.split)
        os.makedirs(image_dir, exist_ok=True)
        width, height, boxes, labels = _read_voc(os.path.join(source_dir, scene.stem + ".xml"))
        unknown = sorted(set(labels) - set(_SOURCE_LABELS))
        if unknown:
            raise DeepForestError(f"{scene.stem}.xml has unexpected labels {unknown}")
        image = cv2.imread(os.path.join(source_dir, scene.stem + ".png"), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != (height, width):
            raise DeepForestError(
                f"{scene.stem}.png does not decode to the {width}x{height} image its XML states"
            )
        if scene.split == "train":
            xs = sliding_windows(width, TILE_SIZE, TRAIN_STRIDE)
            ys = sliding_windows(height, TILE_SIZE, TRAIN_STRIDE)
        else:
            xs, ys = grid_windows(width, TILE_SIZE), grid_windows(height, TILE_SIZE)
        write_tiles(sets[scene.split], image, boxes, labels, scene.stem, xs, ys, image_dir)
    paths = {}
    for split, coco in sets.items():
        paths[split] = _json_path(out_dir, split)
        with open(paths[split], "wb") as f:
            f.write(_dump_json(coco))
    return paths


def _json_path(dataset_dir, split):
    return os.path.join(dataset_dir, "annotations", f"deepforest_{split}.json")


# --------------------------------------------------------------------------------------------
# Prepared folder: verification, locking, atomic publication
# --------------------------------------------------------------------------------------------
def verify_deepforest(dataset_dir, check_images=True):
    """Check a prepared folder: json sha256 against the pins, and (optionally) that every
    listed tile exists. Cheap (two ~100 KB json files). Raises DeepForestError."""
    remedy = (
        f"Delete {dataset_dir} to have it generated again on next use (or run "
        f"`python datasets/prepare_deepforest.py --force`). If it was generated from a "
        f"different deepforest wheel than {DEEPFOREST_WHEEL} (installed: "
        f"{_installed_version()}), install that version first."
    )
    for split in DEEPFOREST_SPLITS:
        path = _json_path(dataset_dir, split)
        if not os.path.isfile(path):
            raise DeepForestError(
                f"DeepForest folder {dataset_dir} is incomplete: {path} is missing. {remedy}"
            )
        actual = sha256_file(path)
        if actual != JSON_SHA256[split]:
            raise DeepForestError(
                f"DeepForest annotation file {path} has sha256 {actual}, expected "
                f"{JSON_SHA256[split]}: it was modified or made by another version of the "
                f"conversion. {remedy}"
            )
        if check_images:
            with open(path, "rb") as f:
                images = json.load(f)["images"]
            image_dir = os.path.join(dataset_dir, split)
            missing = [
                im["file_name"]
                for im in images
                if not os.path.isfile(os.path.join(image_dir, im["file_name"]))
            ]
            if missing:
                raise DeepForestError(
                    f"DeepForest folder {dataset_dir}: {len(missing)} tile(s) of {split} are "
                    f"missing (e.g. {missing[0]}). {remedy}"
                )
