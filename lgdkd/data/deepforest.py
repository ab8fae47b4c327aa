"""DeepForest tree crowns: a small real detection set built from the ``deepforest`` wheel.

The ``deepforest`` wheel (2.1.0 on PyPI, MIT) ships four annotated aerial RGB scenes of NEON
imagery (CC0) at 0.1 m per pixel, with Pascal-VOC XML boxes. They are tiled into 400 px
images and written as two COCO-format sets under ``$DETECTRON2_DATASETS/deepforest/``::

    deepforest/
      annotations/deepforest_train.json   deepforest_val.json
      train/<scene>_x<x0>_y<y0>.png       (400x400 tiles)
      val/<scene>_x<x0>_y<y0>.png         (312-400 px tiles)

Split (by scene, never by tile, so that no tree is seen in both):

- train: ``2019_YELL_2_528000_4978000_image_crop2`` (2299x2472 px, 574 trees), sliding 400 px
  windows with stride 300; the last window of a row/column is moved flush with the border.
- val: ``2019_YELL_2_541000_4977000_image_crop`` (1249x1035, 279 trees), ``OSBS_029``
  (400x400, 61 trees) and ``SOAP_061`` (400x400, 37 trees) as a non-overlapping grid:
  each side is cut into ``ceil(side / 400)`` equal parts, so tiles are at most 400 px and
  nothing is lost at the borders.

One class, "Tree": SOAP_061's "Alive"/"Dead" labels both map to it (the original label is
kept in each annotation's ``source_label``). A box cut by a tile border is clipped to the tile
and kept only if the visible part has at least :data:`MIN_VISIBLE_FRACTION` of its area and is
at least :data:`MIN_BOX_SIDE` px on each side. Tiles without a box are kept (the train loader
drops them while ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is on, evaluation keeps them).

VOC coordinates are read as pixel edges: a box ``xmin=10, xmax=20`` covers 10 pixels, and
becomes the COCO box ``[10, 10, 10, h]`` (``xmax = 400`` occurs on a 400 px scene).

Conversion is deterministic. The sha256 of every source file read and of both generated
json files are pinned below and checked: the sources before conversion, the json files
after it and every time the set is loaded.
"""

import json
import logging
import os

import numpy as np
from detectron2.data.datasets import load_coco_json

from .deepforest_tiles import (  # noqa: F401  (the conversion, re-exported)
    _SCENES,
    _SOURCE_LABELS,
    CLASS_NAMES,
    DEEPFOREST_SPLITS,
    DEEPFOREST_WHEEL,
    FOLDER,
    FORMAT_VERSION,
    JSON_SHA256,
    MIN_BOX_SIDE,
    MIN_VISIBLE_FRACTION,
    TILE_SIZE,
    TRAIN_STRIDE,
    DeepForestError,
    _check_sources,
    _dump_json,
    _installed_version,
    _json_path,
    _read_voc,
    _Scene,
    clip_boxes_to_tile,
    convert_deepforest,
    deepforest_source_dir,
    grid_windows,
    sliding_windows,
    verify_deepforest,
    write_tiles,
)
from .generated import default_datasets_root, publish_folder, register_lazy_set, sha256_file

__all__ = [
    "DEEPFOREST_SPLITS",
    "DeepForestError",
    "check_deepforest_available",
    "convert_deepforest",
    "deepforest_source_dir",
    "deepforest_statistics",
    "default_datasets_root",
    "prepare_deepforest",
    "register_deepforest",
    "verify_deepforest",
]

logger = logging.getLogger(__name__)


def prepare_deepforest(root=None, source_dir=None):
    """Make sure ``<root>/deepforest`` exists and matches the pinned checksums.

    Safe with several processes: the first one to take ``<root>/.deepforest.lock``
    converts into a temporary folder and renames it into place; the others wait and then
    only verify. A folder that exists is never modified (a mismatch is an error).

    Args:
        root: data sets root (default: :func:`default_datasets_root`).
        source_dir: the wheel's ``data/`` folder (default: located with importlib).

    Returns:
        the path of the ``deepforest`` folder.
    """
    root = os.path.abspath(root or default_datasets_root())
    dataset_dir = os.path.join(root, FOLDER)
    if not os.path.isdir(dataset_dir):
        publish_folder(dataset_dir, lambda tmp: _convert_and_verify(tmp, source_dir))
    verify_deepforest(dataset_dir)
    return dataset_dir


def _convert_and_verify(folder, source_dir):
    logger.info("Preparing the DeepForest data set (once; a few seconds)")
    convert_deepforest(folder, source_dir)
    verify_deepforest(folder)


def deepforest_statistics(dataset_dir):
    """Counts and box sizes per split of a prepared folder.

    Returns:
        dict split -> {"tiles", "empty_tiles", "boxes", "scenes", "width"/"height":
        (min, median, max) of box sides in px, "json_sha256"}.
    """
    stats = {}
    for split in DEEPFOREST_SPLITS:
        path = _json_path(dataset_dir, split)
        with open(path, "rb") as f:
            coco = json.load(f)
        wh = np.array([a["bbox"][2:] for a in coco["annotations"]], dtype=np.float64)
        with_box = {a["image_id"] for a in coco["annotations"]}

        def summary(v):
            return (float(v.min()), float(np.median(v)), float(v.max()))

        stats[split] = {
            "tiles": len(coco["images"]),
            "empty_tiles": sum(im["id"] not in with_box for im in coco["images"]),
            "boxes": len(coco["annotations"]),
            "scenes": sorted({im["scene"] for im in coco["images"]}),
            "width": summary(wh[:, 0]),
            "height": summary(wh[:, 1]),
            "json_sha256": sha256_file(path),
        }
    return stats


# --------------------------------------------------------------------------------------------
# detectron2 catalogs
# --------------------------------------------------------------------------------------------
def _load_split(split, root, name):
    dataset_dir = prepare_deepforest(root)
    return load_coco_json(
        _json_path(dataset_dir, split), os.path.join(dataset_dir, split), dataset_name=name
    )


def register_tree_set(name, json_file, image_root, load, root):
    """Register one DeepForest-derived set ``name`` lazily (``load()`` gives its dicts) with
    its metadata; idempotent for the same ``json_file``, an error for another."""
    return register_lazy_set(
        name,
        json_file,
        image_root,
        load,
        DeepForestError,
        thing_classes=list(CLASS_NAMES),
        deepforest_root=root,
    )


def register_deepforest(root=None, prefix="deepforest"):
    """Register ``<prefix>_train`` and ``<prefix>_val`` in detectron2's catalogs (lazy).

    Registration only records paths; the tiles are generated on the first load of either
    set (or by ``datasets/prepare_deepforest.py``). Idempotent for the same ``root``;
    registering an existing name with another root is an error.

    Returns:
        tuple of the registered names.
    """
    root = os.path.abspath(root or default_datasets_root())
    dataset_dir = os.path.join(root, FOLDER)
    return tuple(
        register_tree_set(
            f"{prefix}_{split}",
            _json_path(dataset_dir, split),
            os.path.join(dataset_dir, split),
            lambda s=split, n=f"{prefix}_{split}": _load_split(s, root, n),
            root,
        )
        for split in DEEPFOREST_SPLITS
    )


def check_deepforest_available(root):
    """Raise DeepForestError early when ``<root>/deepforest`` is absent and cannot be made
    (the wheel is missing). Nothing is generated here."""
    if not os.path.isdir(os.path.join(root, FOLDER)):
        deepforest_source_dir()
