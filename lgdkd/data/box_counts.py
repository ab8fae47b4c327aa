"""Loading a registered set with the box rule of :mod:`lgdkd.data.annotations` applied, and
the counts of what the rule dropped or clipped, logged once per process and set."""

import json
import logging
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .annotations import (
    MIN_BOX_SIDE,
    BoxCounts,
    check_coco_categories,
    sanitize_dataset_dicts,
)
from .errors import DatasetError

__all__ = [
    "load_dataset_dicts",
    "recorded_box_counts",
    "report_box_counts",
    "usable_boxes_error",
]

logger = logging.getLogger(__name__)

_counts: Dict[Tuple[str, bool], BoxCounts] = {}
_logged: Dict[Tuple[str, bool], str] = {}


def report_box_counts(counts: BoxCounts, evaluation=False, note=""):
    """Record ``counts`` for :func:`recorded_box_counts` and log them, once per process and set
    (again only when they change): INFO when nothing is dropped, else WARNING."""
    key = (counts.dataset, bool(evaluation))
    _counts[key] = counts
    line = counts.summary()
    if evaluation:
        line = f"{line} (evaluation ground truth{': ' + note if note else ''})"
    if _logged.get(key) == line:
        return
    _logged[key] = line
    logger.log(logging.WARNING if counts.dropped else logging.INFO, line)


def load_dataset_dicts(dataset_name, with_counts=False):
    """``DatasetCatalog.get(dataset_name)`` with the rule applied and its counts reported.

    detectron2's COCO loader stops on an unknown category id with a bare KeyError; that
    becomes a DatasetError naming the json file and the annotation. A set that is not a list
    of dicts with annotations is returned as it is.

    Returns:
        the dataset dicts, or ``(dicts, counts)`` when ``with_counts`` (counts None for a set
        without annotations).
    """
    try:
        dicts = DatasetCatalog.get(dataset_name)
    except KeyError as e:
        err = _unknown_category_error(dataset_name, e)
        if err is None:
            raise
        raise err from e
    if not isinstance(dicts, list) or not dicts or "annotations" not in dicts[0]:
        return (dicts, None) if with_counts else dicts
    classes = getattr(MetadataCatalog.get(dataset_name), "thing_classes", None)
    dicts, counts = sanitize_dataset_dicts(
        dicts, dataset_name, None if classes is None else len(classes)
    )
    report_box_counts(counts)
    return (dicts, counts) if with_counts else dicts


def _unknown_category_error(dataset_name, exc) -> Optional[DatasetError]:
    if "category_id" not in str(exc):
        return None
    json_file = getattr(MetadataCatalog.get(dataset_name), "json_file", None)
    if not json_file or not os.path.isfile(json_file):
        return None
    with open(json_file, "rb") as f:
        data = json.load(f)
    try:
        check_coco_categories(data, json_file, dataset_name)
    except DatasetError as err:
        return err
    return None


def recorded_box_counts(dataset_name, evaluation=False) -> Optional[BoxCounts]:
    """The counts last reported for ``dataset_name`` in this process, or None (nothing
    loaded). :func:`lgdkd.data.ground_truth.box_counts` loads the set when needed."""
    return _counts.get((dataset_name, bool(evaluation)))


def usable_boxes_error(counts: List[BoxCounts], option="DATASETS.TRAIN") -> DatasetError:
    """The error for sets whose every box was dropped by the rule (each one named)."""
    details = "; ".join(
        f"{c.dataset!r}: {c.images:,} images, {c.boxes:,} boxes, {c.describe_dropped()}"
        + (f" (e.g. {c.examples[0]})" if c.examples else "")
        for c in counts
    )
    return DatasetError(
        f"{option} set(s) with no usable box left: {details}. A box must be [x, y, width, "
        f"height] in pixels (bbox_mode XYWH_ABS; XYXY_ABS for [x0, y0, x1, y1]) with width and "
        f"height over {MIN_BOX_SIDE} px and some part inside its image's width x height. Check "
        f"whether the file stores [x0, y0, x1, y1] or coordinates relative to the image size, "
        f'and the images\' width/height; see datasets/README.md, "Which boxes are used".'
    )
