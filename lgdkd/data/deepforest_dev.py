"""A development split carved from DeepForest's training scene, for choices (teachers, weights,
schedules) that must not look at the validation scenes.

The training scene (2,299 x 2,472 px) is cut at scene row :data:`DEV_BAND_TOP`:

* ``deepforest_dev``: the band below it (rows 1672-2472, 800 px) cut into a grid of
  non-overlapping tiles of at most 400 px (2 rows x 6 columns = 12 tiles, 193 boxes), with the
  boxes clipped by the training rule of :func:`lgdkd.data.deepforest.clip_boxes_to_tile`;
* ``deepforest_traindev``: the training tiles (400 px, stride 300) that lie wholly above it
  (rows 0-1600: 40 of the 64 tiles, 630 boxes), with their annotations as in
  ``deepforest_train``.

No pixel of a dev tile is in a traindev tile (the 72 rows between 1600 and 1672 are in
neither). A crown that straddles the cut can appear, clipped, in both. Files live in
``<root>/deepforest_dev`` (``annotations/`` and ``dev/``; traindev's images are the training
tiles of ``<root>/deepforest/train``), are made on first load from the same pinned wheel scene
and are checked against :data:`JSON_SHA256`.
"""

import json
import logging
import os

import cv2
from detectron2.data.datasets import load_coco_json

from .deepforest import (
    _SCENES,
    FOLDER,
    TILE_SIZE,
    DeepForestError,
    _check_sources,
    _dump_json,
    _json_path,
    _read_voc,
    deepforest_source_dir,
    grid_windows,
    prepare_deepforest,
    register_tree_set,
    write_tiles,
)
from .generated import default_datasets_root, publish_folder, sha256_file

__all__ = ["DEV_BAND_TOP", "DEV_SPLITS", "make_dev_split", "prepare_deepforest_dev", "register"]

logger = logging.getLogger(__name__)

DEV_FOLDER = "deepforest_dev"
DEV_BAND_TOP = 1672
DEV_SPLITS = ("traindev", "dev")
JSON_SHA256 = {
    "traindev": "492f6801fae51e7e1ba1ef41187db2bbf34d7205a0298e1aa47db29562b1ea40",
    "dev": "d0734f0d8f3e8e21e0181510e64d686d8729541460a840a8cd8e77a093c83695",
}
_TMP_PREFIX = ".deepforest_dev-tmp-"


def _dev_json(folder, split):
    return os.path.join(folder, "annotations", f"deepforest_{split}.json")


def make_dev_split(out_dir, dataset_dir, source_dir=None):
    """Write the two sets into ``out_dir`` from the prepared ``dataset_dir`` (its training json)
    and the wheel's training scene. Deterministic. Returns dict split -> json path."""
    source_dir = source_dir or deepforest_source_dir()
    _check_sources(source_dir)
    with open(_json_path(dataset_dir, "train")) as f:
        train = json.load(f)
    (scene,) = [s for s in _SCENES if s.split == "train"]
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    image_dir = os.path.join(out_dir, "dev")
    os.makedirs(image_dir, exist_ok=True)

    def header(split, description):
        info = dict(train["info"], description=description, split=split)
        return {"info": info, "categories": train["categories"], "images": [], "annotations": []}

    traindev = header("traindev", f"training tiles wholly above scene row {DEV_BAND_TOP}")
    keep = {i["id"] for i in train["images"] if i["scene_box"][3] <= DEV_BAND_TOP}
    traindev["images"] = [i for i in train["images"] if i["id"] in keep]
    traindev["annotations"] = [a for a in train["annotations"] if a["image_id"] in keep]

    dev = header("dev", f"grid tiles of the training scene from row {DEV_BAND_TOP} down")
    width, height, boxes, labels = _read_voc(os.path.join(source_dir, scene.stem + ".xml"))
    image = cv2.imread(os.path.join(source_dir, scene.stem + ".png"), cv2.IMREAD_COLOR)
    if image is None or image.shape[:2] != (height, width):
        raise DeepForestError(f"{scene.stem}.png does not decode to its {width}x{height} image")
    ys = [
        (DEV_BAND_TOP + a, DEV_BAND_TOP + b)
        for a, b in grid_windows(height - DEV_BAND_TOP, TILE_SIZE)
    ]
    write_tiles(
        dev, image, boxes, labels, scene.stem, grid_windows(width, TILE_SIZE), ys, image_dir
    )
    paths = {}
    for split, coco in (("traindev", traindev), ("dev", dev)):
        paths[split] = _dev_json(out_dir, split)
        with open(paths[split], "wb") as f:
            f.write(_dump_json(coco))
    return paths


def _verify(folder):
    for split in DEV_SPLITS:
        path = _dev_json(folder, split)
        if not os.path.isfile(path):
            raise DeepForestError(f"{path} is missing; remove {folder} and load the set again")
        actual = sha256_file(path)
        if actual != JSON_SHA256[split]:
            raise DeepForestError(
                f"{path} has sha256 {actual}, expected {JSON_SHA256[split]}: it was modified or "
                f"made by another version of this code; remove {folder} and load the set again"
            )


def prepare_deepforest_dev(root=None, source_dir=None):
    """Make sure ``<root>/deepforest_dev`` exists and matches the pins (made once, under a
    lock, in a temporary folder renamed into place). Returns its path."""
    root = os.path.abspath(root or default_datasets_root())
    dataset_dir = prepare_deepforest(root, source_dir)
    folder = os.path.join(root, DEV_FOLDER)
    if not os.path.isdir(folder):
        publish_folder(folder, lambda tmp: _carve_and_verify(tmp, dataset_dir, source_dir))
    _verify(folder)
    return folder


def _carve_and_verify(folder, dataset_dir, source_dir):
    logger.info("Carving the DeepForest dev split (once)")
    make_dev_split(folder, dataset_dir, source_dir)
    _verify(folder)


def _image_root(root, split):
    if split == "traindev":
        return os.path.join(root, FOLDER, "train")
    return os.path.join(root, DEV_FOLDER, "dev")


def _load(split, root, name):
    folder = prepare_deepforest_dev(root)
    return load_coco_json(_dev_json(folder, split), _image_root(root, split), dataset_name=name)


def register(root=None, prefix="deepforest"):
    """Register ``<prefix>_traindev`` and ``<prefix>_dev`` (lazy: files made on first load).
    Idempotent for the same root; another root under the same name is an error."""
    root = os.path.abspath(root or default_datasets_root())
    folder = os.path.join(root, DEV_FOLDER)
    return tuple(
        register_tree_set(
            f"{prefix}_{split}",
            _dev_json(folder, split),
            _image_root(root, split),
            lambda s=split, n=f"{prefix}_{split}": _load(s, root, n),
            root,
        )
        for split in DEV_SPLITS
    )
