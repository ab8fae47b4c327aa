"""Which boxes are used: one rule for the training boxes and the evaluation ground truth.

detectron2 clips a box to its image and drops it when it is empty only deep in the training
mapper (``transform_instance_annotations``, ``Boxes.clip``, ``filter_empty_instances``), one
image at a time and without a count, while COCO evaluation reads the raw json. A set whose
boxes are all degenerate therefore trains on background in silence, and a box partly
outside its image is clipped for training but not for evaluation. Here the rule is applied
once, when a set is loaded, with counts (``datasets/README.md``, "Which boxes are used").

The rule, for every non-crowd box, in this order (the first that applies is the reason):

1. ``non_finite``: a coordinate is NaN, infinite or missing (json ``null``): dropped;
2. ``negative_size``: width or height < 0 (XYWH), or x1 < x0 / y1 < y0 (XYXY): dropped;
3. ``zero_size``: width or height <= :data:`MIN_BOX_SIDE` as annotated: dropped;
4. the box is clipped to its image, ``[0, width] x [0, height]`` of the record, when a side
   lies more than :data:`MIN_BOX_SIDE` outside (a smaller overhang is float rounding of
   ``x + w``: left as it is, detectron2's own clip removes it); and
5. ``outside_image``: after clipping, width or height <= :data:`MIN_BOX_SIDE`: dropped.

Crowd regions (``iscrowd`` 1) are left as they are: detectron2 leaves them out of training
and COCO evaluation uses them as ignored regions. Boxes in another mode than ``XYXY_ABS`` /
``XYWH_ABS`` (rotated) are left as they are. An annotation whose ``category_id`` is not one of
the set's categories is an error (:class:`DatasetError` naming the file and the record): a
wrong label space is a bug in the json, and dropping such boxes would quietly train on fewer
classes. A record without width/height is only clipped at 0.

Shape shorthand: N = number of (non-crowd, axis-aligned) boxes of a set.
"""

import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Tuple

import numpy as np
from detectron2.structures import BoxMode

from .errors import DatasetError

__all__ = [
    "DROP_REASONS",
    "MIN_BOX_SIDE",
    "RULE_VERSION",
    "BoxCounts",
    "apply_box_rule",
    "check_coco_categories",
    "sanitize_coco_dict",
    "sanitize_dataset_dicts",
]

logger = logging.getLogger(__name__)

# A box side must be longer than this many pixels, and a coordinate must lie more than this
# outside the image to be clipped. A thousandth of a pixel is far below any annotation's
# precision (COCO's boxes have 2 decimals) and far above float rounding; a kept box also
# survives detectron2's own emptiness test (1e-5 px) after any resize down to 1/100.
MIN_BOX_SIDE = 1e-3
# Part of the cache key of sanitised evaluation json files: change it with the rule.
RULE_VERSION = "lgdkd-boxes-v1"

# reason key -> words used in logs and errors; the k-th key is code k + 1 of apply_box_rule
DROP_REASONS = {
    "non_finite": "non-finite coordinates",
    "negative_size": "negative width or height",
    "zero_size": "zero width or height",
    "outside_image": "zero width or height after clipping to the image",
}
_REASON_OF_CODE = (None,) + tuple(DROP_REASONS)
_MAX_EXAMPLES = 3


@dataclass(frozen=True)
class BoxCounts:
    """What the rule did to one data set (one load).

    ``boxes`` counts every annotation of the set's images, crowd regions included;
    ``dropped`` maps a key of :data:`DROP_REASONS` to its count (non-zero entries only);
    ``examples`` names a few malformed boxes (non-finite or negative size) to find them.
    """

    dataset: str
    images: int
    boxes: int
    crowd: int = 0
    other_mode: int = 0
    clipped: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)
    images_with_boxes: int = 0
    examples: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def usable(self) -> int:
        """Non-crowd boxes left after the rule."""
        return self.boxes - self.crowd - self.num_dropped

    @property
    def changed(self) -> bool:
        return bool(self.clipped or self.dropped)

    def describe_dropped(self) -> str:
        if not self.dropped:
            return "none dropped"
        if len(self.dropped) == 1:
            parts = DROP_REASONS[next(iter(self.dropped))]
        else:
            parts = ", ".join(f"{n:,} {DROP_REASONS[k]}" for k, n in self.dropped.items())
        return f"{self.num_dropped:,} dropped ({parts})"

    def summary(self) -> str:
        """One line, e.g. ``mytrees_train: 1,041 boxes in 64 images (3 crowd, left as they
        are); 2 dropped (zero width or height), 17 clipped to the image``."""
        left = [f"{self.crowd:,} crowd"] if self.crowd else []
        if self.other_mode:
            left.append(f"{self.other_mode:,} rotated")
        kept = f" ({' and '.join(left)}, left as they are)" if left else ""
        text = (
            f"{self.dataset}: {self.boxes:,} boxes in {self.images:,} images{kept}; "
            f"{self.describe_dropped()}, {self.clipped:,} clipped to the image"
        )
        if self.examples:
            text += "; e.g. " + "; ".join(self.examples)
        return text


# --------------------------------------------------------------------------------------------
# The rule, vectorised
# --------------------------------------------------------------------------------------------
def apply_box_rule(boxes, xywh, image_sizes):
    """Apply the rule of this module to N boxes at once.

    Args:
        boxes: (N, 4) float64, each row in its own mode.
        xywh: (N,) bool, True for a row in ``XYWH_ABS``, False for ``XYXY_ABS``.
        image_sizes: (N, 2) float64 (width, height) of each box's image; inf where unknown.

    Returns:
        (out, reason, clipped): ``out`` (N, 4) in the input modes, with the clipped rows
        replaced; ``reason`` (N,) int8, 0 for a kept box, else ``k + 1`` for the k-th key of
        :data:`DROP_REASONS`; ``clipped`` (N,) bool, kept boxes that were clipped.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.asarray(xywh, dtype=bool)
    image_sizes = np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore", over="ignore"):
        x0, y0 = boxes[:, 0], boxes[:, 1]
        w = np.where(xywh, boxes[:, 2], boxes[:, 2] - x0)
        h = np.where(xywh, boxes[:, 3], boxes[:, 3] - y0)
        x1 = np.where(xywh, x0 + w, boxes[:, 2])
        y1 = np.where(xywh, y0 + h, boxes[:, 3])
        finite = np.isfinite(boxes).all(axis=1)
        negative = finite & ((w < 0) | (h < 0))
        zero = finite & ~negative & ((w <= MIN_BOX_SIDE) | (h <= MIN_BOX_SIDE))
        width, height = image_sizes[:, 0], image_sizes[:, 1]
        cx0, cx1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
        cy0, cy1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
        moved = (
            (np.abs(cx0 - x0) > MIN_BOX_SIDE)
            | (np.abs(cx1 - x1) > MIN_BOX_SIDE)
            | (np.abs(cy0 - y0) > MIN_BOX_SIDE)
            | (np.abs(cy1 - y1) > MIN_BOX_SIDE)
        )
        empty = ((cx1 - cx0) <= MIN_BOX_SIDE) | ((cy1 - cy0) <= MIN_BOX_SIDE)
    reason = np.zeros(len(boxes), dtype=np.int8)
    reason[finite & ~negative & ~zero & empty] = 4
    reason[zero] = 3
    reason[negative] = 2
    reason[~finite] = 1
    clipped = (reason == 0) & moved
    out = boxes.copy()
    out[clipped, 0], out[clipped, 1] = cx0[clipped], cy0[clipped]
    as_wh = clipped & xywh
    as_xy = clipped & ~xywh
    out[as_wh, 2], out[as_wh, 3] = (cx1 - cx0)[as_wh], (cy1 - cy0)[as_wh]
    out[as_xy, 2], out[as_xy, 3] = cx1[as_xy], cy1[as_xy]
    return out, reason, clipped


def _as_box_array(bboxes, describe):
    """(N, 4) float64 of ``bboxes``; DatasetError naming the first box that is not 4 numbers
    (``describe(k)`` names the k-th)."""
    try:
        arr = np.asarray(bboxes, dtype=np.float64)
        if arr.shape == (len(bboxes), 4):
            return arr
    except (TypeError, ValueError):
        pass
    for k, b in enumerate(bboxes):
        try:
            ok = np.asarray(b, dtype=np.float64).shape == (4,)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DatasetError(
                f"{describe(k)} has bbox {b!r}; a box is 4 numbers, [x, y, width, height] "
                f"(bbox_mode XYWH_ABS, COCO json) or [x0, y0, x1, y1] (XYXY_ABS)."
            )
    return np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)


def _counts_of(name, images, boxes, reason, clipped, owners, **extra):
    """BoxCounts from the rule's output; ``owners`` (N,) names each box's image, and
    ``extra_owners`` the images of boxes that are used but not checked (rotated)."""
    dropped = np.bincount(reason, minlength=len(_REASON_OF_CODE))[1:].tolist()
    kept_owners = np.unique(np.asarray(owners)[reason == 0]).tolist() if owners else []
    return BoxCounts(
        dataset=name,
        images=images,
        boxes=boxes,
        clipped=int(clipped.sum()),
        dropped={key: n for key, n in zip(DROP_REASONS, dropped) if n},
        images_with_boxes=len(set(kept_owners) | set(extra.pop("extra_owners", ()))),
        **extra,
    )


# --------------------------------------------------------------------------------------------
# detectron2 dataset dicts
# --------------------------------------------------------------------------------------------
def sanitize_dataset_dicts(dataset_dicts, dataset_name="dataset", num_classes=None):
    """Apply the rule to detectron2 dataset dicts. O(boxes): one python pass to gather the
    boxes, numpy for the rule, and copies of the changed records only.

    Args:
        dataset_dicts: list of records (``width``, ``height``, ``annotations`` with ``bbox``,
            ``bbox_mode``, ``category_id``, ``iscrowd``). Never modified: a catalog function
            may return the same list on every call.
        num_classes: when given, every ``category_id`` must be in ``[0, num_classes)``.

    Returns:
        (dicts, counts): ``dataset_dicts`` itself when the rule changes nothing, else a new
        list in which the changed records are shallow copies with new annotation lists (a
        clipped box keeps its ``bbox_mode``); and a :class:`BoxCounts`.

    Raises:
        DatasetError: a bbox that is not 4 numbers, or a category id out of range.
    """
    bboxes, xywh, owners, positions, categories, extra_owners = [], [], [], [], [], []
    crowd = other_mode = boxes = 0
    xyxy_mode, xywh_mode = BoxMode.XYXY_ABS, BoxMode.XYWH_ABS
    inf = float("inf")
    record_sizes = [(r.get("width") or inf, r.get("height") or inf) for r in dataset_dicts]
    for i, record in enumerate(dataset_dicts):
        anns = record.get("annotations")
        if not anns:
            continue
        boxes += len(anns)
        for j, ann in enumerate(anns):
            if ann.get("iscrowd", 0):
                crowd += 1
                if "category_id" in ann:  # optional for regions that training leaves out
                    categories.append(ann["category_id"])
                continue
            categories.append(ann.get("category_id"))
            mode = ann.get("bbox_mode")
            if mode != xywh_mode and mode != xyxy_mode:
                other_mode += 1
                extra_owners.append(i)
                continue
            bboxes.append(ann.get("bbox"))
            xywh.append(mode == xywh_mode)
            owners.append(i)
            positions.append(j)

    if num_classes is not None and categories:
        _check_contiguous_categories(dataset_dicts, dataset_name, categories, num_classes)

    def describe(k):
        record = dataset_dicts[owners[k]]
        return (
            f"Data set {dataset_name!r}: annotation {positions[k]} of record "
            f"image_id={record.get('image_id', '?')!r} ({record.get('file_name', '?')})"
        )

    arr = _as_box_array(bboxes, describe)
    sizes = np.asarray(record_sizes, dtype=np.float64).reshape(-1, 2)[np.asarray(owners, int)]
    out, reason, clipped = apply_box_rule(arr, xywh, sizes)
    counts = _counts_of(
        dataset_name,
        len(dataset_dicts),
        boxes,
        reason,
        clipped,
        owners,
        crowd=crowd,
        other_mode=other_mode,
        extra_owners=extra_owners,
        examples=_examples(reason, bboxes, describe),
    )
    changed = np.flatnonzero((reason != 0) | clipped)
    if changed.size == 0:
        return dataset_dicts, counts
    edits = defaultdict(dict)  # record index -> {annotation position: new box or None}
    for k in changed.tolist():
        edits[owners[k]][positions[k]] = None if reason[k] else out[k].tolist()
    result = list(dataset_dicts)
    for i, by_position in edits.items():
        record = result[i]
        anns = []
        for j, ann in enumerate(record["annotations"]):
            if j not in by_position:
                anns.append(ann)
            elif by_position[j] is not None:
                anns.append({**ann, "bbox": by_position[j]})
        result[i] = {**record, "annotations": anns}
    return result, counts


def _examples(reason, bboxes, describe):
    bad = np.flatnonzero((reason == 1) | (reason == 2))[:_MAX_EXAMPLES]
    return tuple(
        f"{describe(k)}: bbox {bboxes[k]!r} ({DROP_REASONS[_REASON_OF_CODE[reason[k]]]})"
        for k in bad.tolist()
    )


def _check_contiguous_categories(dataset_dicts, dataset_name, categories, num_classes):
    try:
        ids = np.asarray(categories, dtype=np.int64)
        bad = np.flatnonzero((ids < 0) | (ids >= num_classes) | (ids != np.asarray(categories)))
    except (TypeError, ValueError):
        bad = [k for k, c in enumerate(categories) if not isinstance(c, (int, np.integer))]
    if len(bad) == 0:
        return
    # the bad[0]-th category that sanitize_dataset_dicts gathered, found the same way
    checked = (
        (record, j, ann)
        for record in dataset_dicts
        for j, ann in enumerate(record.get("annotations") or ())
        if not ann.get("iscrowd", 0) or "category_id" in ann
    )
    record, j, ann = next(itertools.islice(checked, int(bad[0]), None))
    raise DatasetError(
        f"Data set {dataset_name!r}: annotation {j} of record "
        f"image_id={record.get('image_id', '?')!r} ({record.get('file_name', '?')}) has "
        f"category_id={ann.get('category_id')!r}, which is not one of the set's "
        f"{num_classes} classes (contiguous ids 0..{num_classes - 1} of its "
        f"thing_classes); {len(bad):,} annotation(s) have such ids. Fix the set's "
        f"loader, or its thing_classes metadata."
    )


# --------------------------------------------------------------------------------------------
# COCO json
# --------------------------------------------------------------------------------------------
def sanitize_coco_dict(data, dataset_name="dataset", json_file=None):
    """Apply the rule to a parsed COCO json (boxes ``[x, y, w, h]``, image sizes from its
    ``images``). Annotations of images that the file does not list are left as they are and
    not counted (neither detectron2's loader nor COCO evaluation reads them).

    Returns:
        (data, counts): ``data`` itself when the rule changes nothing, else a shallow copy
        with a new ``annotations`` list: dropped boxes removed, clipped ones with the new
        ``bbox`` and, when they have no segmentation, ``area`` = width x height (a mask's
        area does not change with its box). Other fields (ids, segmentation) are kept.

    Raises:
        DatasetError: a category id that is not in ``categories``, or a bbox that is not 4
            numbers; the message names ``json_file`` and the annotation.
    """
    where = json_file or f"the COCO json of {dataset_name!r}"
    images = data.get("images") or []
    anns = data.get("annotations") or []
    check_coco_categories(data, where, dataset_name)
    inf = float("inf")
    size_of = {im.get("id"): (im.get("width") or inf, im.get("height") or inf) for im in images}
    bboxes, sizes, index, owners = [], [], [], []
    crowd = skipped = 0
    for k, ann in enumerate(anns):
        size = size_of.get(ann.get("image_id"))
        if size is None:
            skipped += 1
        elif ann.get("iscrowd", 0):
            crowd += 1
        else:
            bboxes.append(ann.get("bbox"))
            sizes.append(size)
            index.append(k)
            owners.append(ann.get("image_id"))

    def describe(n):
        ann = anns[index[n]]
        return f"{where}: annotation id={ann.get('id')!r} of image_id={ann.get('image_id')!r}"

    arr = _as_box_array(bboxes, describe)
    out, reason, clipped = apply_box_rule(
        arr, np.ones(len(arr), dtype=bool), np.asarray(sizes).reshape(-1, 2)
    )
    counts = _counts_of(
        dataset_name,
        len(images),
        len(anns) - skipped,
        reason,
        clipped,
        owners,
        crowd=crowd,
        examples=_examples(reason, bboxes, describe),
    )
    changed = np.flatnonzero((reason != 0) | clipped)
    if changed.size == 0:
        return data, counts
    new_anns = list(anns)
    for n in changed.tolist():
        k = index[n]
        if reason[n]:
            new_anns[k] = None
            continue
        x, y, w, h = out[n].tolist()
        ann = {**anns[k], "bbox": [x, y, w, h]}
        if not ann.get("segmentation"):
            ann["area"] = w * h
        new_anns[k] = ann
    return {**data, "annotations": [a for a in new_anns if a is not None]}, counts


def check_coco_categories(data, where, dataset_name="dataset"):
    """Raise DatasetError naming ``where`` and the first annotation whose ``category_id`` is
    not the id of one of ``data["categories"]`` (a crowd region may have none)."""
    ids = {c.get("id") for c in data.get("categories") or [] if isinstance(c, dict)}
    anns = data.get("annotations") or []
    bad = [
        a
        for a in anns
        if a.get("category_id") not in ids and ("category_id" in a or not a.get("iscrowd", 0))
    ]
    if not bad:
        return
    a = bad[0]
    shown = sorted(ids, key=str)[:10]
    raise DatasetError(
        f"{where} (data set {dataset_name!r}): annotation id={a.get('id')!r} of "
        f"image_id={a.get('image_id')!r} has category_id={a.get('category_id')!r}, which is "
        f"not the id of any of the file's {len(ids)} categories ({shown}"
        f"{', ...' if len(ids) > 10 else ''}); {len(bad):,} annotation(s) have such ids. Fix "
        f'the json: correct their category_id, or add the category to "categories".'
    )
