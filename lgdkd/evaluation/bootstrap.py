"""AP at one IoU threshold from per-image matches, and a paired bootstrap over images and seeds.

A validation set of a few large tiles carries, besides the training noise that seeds measure,
the noise of which scenes happen to be in it. :func:`paired_bootstrap` puts both in one
interval: each replicate draws the images (tiles) with replacement and, independently, the
seed pairs with replacement, and computes the mean over the drawn pairs of
``AP(arm, seed) − AP(baseline, seed)`` on the drawn images. The percentile interval of the
replicates is the CI of the paired difference.

AP is computed the way pycocotools computes it at one IoU threshold, area range "all" and
``max_dets`` detections per image (``AP50`` with the defaults), so that it can be recomputed
cheaply on any multiset of images:

* per image and category, detections sorted by score (stable), the first ``max_dets`` kept;
  each takes the unmatched non-crowd ground-truth box of highest IoU >= the threshold (ties:
  the later box, as pycocotools); a detection whose best match is a crowd box is ignored;
* per category, the kept detections of all images sorted by score (stable, image order), the
  precision made monotone and read at the 101 recall points 0, 0.01, ..., 1 (0 beyond the
  largest recall); categories without ground truth are left out of the mean.

:func:`match_images` does the matching once per run; :func:`average_precision` then takes any
list of image indices (repeats allowed). ``tests/test_bootstrap.py`` checks the result against
pycocotools on random sets.
"""

import json
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "BootstrapResult",
    "ImageMatches",
    "average_precision",
    "load_coco_json",
    "match_images",
    "metric_matches",
    "paired_bootstrap",
]

RECALL_POINTS = np.linspace(0.0, 1.0, 101)
METRIC_THRESHOLDS = {
    "AP": tuple(np.linspace(0.5, 0.95, 10)),
    "AP50": (0.5,),
    "AP75": (0.75,),
}


@dataclass
class ImageMatches:
    """One run's detections, matched to the ground truth image by image.

    Attributes:
        image_ids: the images, in the ground truth's order.
        categories: the category ids with at least one non-crowd ground-truth box.
        scores, matched: per image, per category: the kept detections' scores and whether each
            is a true positive (ignored detections left out).
        num_gt: per image, per category: the number of non-crowd ground-truth boxes.
    """

    image_ids: List[int]
    categories: List[int]
    scores: List[Dict[int, np.ndarray]]
    matched: List[Dict[int, np.ndarray]]
    num_gt: List[Dict[int, int]]


def load_coco_json(path: str):
    """A json file (ground truth dict or a detection list)."""
    with open(path) as f:
        return json.load(f)


def _iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes; for a crowd box the union is the detection's area (COCO)."""
    dx1, dy1 = dets[:, 0:1], dets[:, 1:2]
    dx2, dy2 = dx1 + dets[:, 2:3], dy1 + dets[:, 3:4]
    gx1, gy1 = gts[None, :, 0], gts[None, :, 1]
    gx2, gy2 = gx1 + gts[None, :, 2], gy1 + gts[None, :, 3]
    iw = np.clip(np.minimum(dx2, gx2) - np.maximum(dx1, gx1), 0, None)
    ih = np.clip(np.minimum(dy2, gy2) - np.maximum(dy1, gy1), 0, None)
    inter = iw * ih
    d_area = dets[:, 2:3] * dets[:, 3:4]
    g_area = (gts[:, 2] * gts[:, 3])[None, :]
    union = np.where(crowd[None, :], d_area, d_area + g_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match_one(dets, scores, gts, crowd, iou_thresh):
    """pycocotools' greedy matching for one image and category; returns (kept scores, tp)."""
    order = np.argsort(-scores, kind="mergesort")
    dets, scores = dets[order], scores[order]
    g_order = np.argsort(crowd, kind="mergesort")  # non-crowd first, as pycocotools
    gts, crowd = gts[g_order], crowd[g_order]
    ious = _iou(dets, gts, crowd) if len(gts) and len(dets) else np.zeros((len(dets), len(gts)))
    taken = np.zeros(len(gts), dtype=bool)
    tp = np.zeros(len(dets), dtype=bool)
    ignore = np.zeros(len(dets), dtype=bool)
    for d in range(len(dets)):
        best, m = min(iou_thresh, 1 - 1e-10), -1
        for g in range(len(gts)):
            if taken[g] and not crowd[g]:
                continue
            if m > -1 and not crowd[m] and crowd[g]:
                break
            if ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m == -1:
            continue
        taken[m] = True
        if crowd[m]:
            ignore[d] = True
        else:
            tp[d] = True
    keep = ~ignore
    return scores[keep], tp[keep]


def match_images(
    gt: Mapping, detections: Sequence[Mapping], iou_thresh: float = 0.5, max_dets: int = 100
) -> ImageMatches:
    """Match a run's COCO-format ``detections`` (e.g. ``inference/coco_instances_results.json``)
    to the COCO ground truth dict ``gt``.

    Raises:
        ValueError: a detection names an image that is not in the ground truth.
    """
    image_ids = [img["id"] for img in gt["images"]]
    index = {i: k for k, i in enumerate(image_ids)}
    n = len(image_ids)
    gt_boxes: List[Dict[int, list]] = [dict() for _ in range(n)]
    for a in gt["annotations"]:
        crowd = bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0))
        gt_boxes[index[a["image_id"]]].setdefault(a["category_id"], []).append((a["bbox"], crowd))
    dt: List[Dict[int, list]] = [dict() for _ in range(n)]
    for d in detections:
        if d["image_id"] not in index:
            raise ValueError(
                f"detection for image id {d['image_id']}, which is not in the ground truth "
                f"({n} images): the detections belong to another data set"
            )
        dt[index[d["image_id"]]].setdefault(d["category_id"], []).append((d["bbox"], d["score"]))
    categories = sorted({a["category_id"] for a in gt["annotations"] if not a.get("iscrowd", 0)})
    scores, matched, num_gt = [], [], []
    for i in range(n):
        s_i, m_i, n_i = {}, {}, {}
        for c in set(gt_boxes[i]) | set(dt[i]):
            g = gt_boxes[i].get(c, [])
            gb = np.array([b for b, _ in g], dtype=np.float64).reshape(-1, 4)
            gc = np.array([cr for _, cr in g], dtype=bool)
            d = dt[i].get(c, [])
            db = np.array([b for b, _ in d], dtype=np.float64).reshape(-1, 4)
            ds = np.array([s for _, s in d], dtype=np.float64)
            order = np.argsort(-ds, kind="mergesort")[:max_dets]
            s, tp = _match_one(db[order], ds[order], gb, gc, iou_thresh)
            s_i[c], m_i[c], n_i[c] = s, tp, int((~gc).sum())
        scores.append(s_i)
        matched.append(m_i)
        num_gt.append(n_i)
    return ImageMatches(image_ids, categories, scores, matched, num_gt)


def _category_ap(scores: List[np.ndarray], tps: List[np.ndarray], npig: int) -> float:
    s = np.concatenate(scores) if scores else np.zeros(0)
    tp = np.concatenate(tps) if tps else np.zeros(0, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    tp = tp[order]
    tp_sum = np.cumsum(tp, dtype=np.float64)
    fp_sum = np.cumsum(~tp, dtype=np.float64)
    recall = tp_sum / npig
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.zeros(len(RECALL_POINTS))
    ok = idx < len(precision)
    q[ok] = precision[idx[ok]]
    return float(q.mean())


def average_precision(m: ImageMatches, images: Optional[Sequence[int]] = None) -> float:
    """AP (in %) over ``images`` (indices into ``m.image_ids``, repeats allowed; default: all).
    NaN when no category has ground truth in them."""
    images = range(len(m.image_ids)) if images is None else images
    aps = []
    for c in m.categories:
        npig = sum(m.num_gt[i].get(c, 0) for i in images)
        if npig == 0:
            continue
        s = [m.scores[i][c] for i in images if c in m.scores[i]]
        t = [m.matched[i][c] for i in images if c in m.matched[i]]
        aps.append(_category_ap(s, t, npig))
    return 100.0 * float(np.mean(aps)) if aps else float("nan")


def metric_matches(
    gt: Mapping, detections: Sequence[Mapping], metric: str, max_dets: int = 100
) -> List[ImageMatches]:
    """The matches that ``metric`` needs: "AP50" / "AP75" one threshold, "AP" the ten of
    0.5:0.95 (COCO's AP is the mean of their APs)."""
    thresholds = METRIC_THRESHOLDS.get(metric.split("/")[-1])
    if thresholds is None:
        raise ValueError(
            f"no per-image AP for metric {metric!r}; choose one of {sorted(METRIC_THRESHOLDS)}"
        )
    return [match_images(gt, detections, t, max_dets) for t in thresholds]


def _ap(m, images=None) -> float:
    if isinstance(m, ImageMatches):
        return average_precision(m, images)
    return float(np.mean([average_precision(x, images) for x in m]))


@dataclass
class BootstrapResult:
    """The paired difference ``arm − baseline`` of :func:`paired_bootstrap`.

    Attributes:
        seeds: the seeds paired.
        baseline, arm: the AP per seed on all images.
        mean_delta: mean over seeds of the per-seed difference on all images.
        ci: the percentile interval of the replicates.
        confidence: its level.
        replicates: how many.
        images: how many images were drawn from.
    """

    seeds: Tuple[int, ...]
    baseline: Tuple[float, ...]
    arm: Tuple[float, ...]
    mean_delta: float
    ci: Tuple[float, float]
    confidence: float
    replicates: int
    images: int


def paired_bootstrap(
    baseline: Mapping[int, ImageMatches],
    arm: Mapping[int, ImageMatches],
    replicates: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
) -> BootstrapResult:
    """Paired bootstrap of the AP difference over images and seeds (module docstring).

    Args:
        baseline, arm: ``{seed: ImageMatches}`` of the two arms (or ``{seed: [ImageMatches
            per IoU threshold]}``, :func:`metric_matches`: AP is their mean), the same seeds,
            matched against the same ground truth.
        resample_seeds: also draw the seed pairs (False: the images only).

    Raises:
        ValueError: different seeds, or runs on different image sets.
    """
    if set(baseline) != set(arm) or not baseline:
        raise ValueError(
            f"a paired bootstrap needs the same seeds in both arms: baseline {sorted(baseline)}, "
            f"arm {sorted(arm)}"
        )
    seeds = tuple(sorted(baseline))

    def first(m):
        return m if isinstance(m, ImageMatches) else m[0]

    ids = first(baseline[seeds[0]]).image_ids
    for s in seeds:
        for name, m in (("baseline", baseline[s]), ("arm", arm[s])):
            if first(m).image_ids != ids:
                raise ValueError(f"{name} seed {s} was matched on another image set")
    n_img = len(ids)
    base_all = tuple(_ap(baseline[s]) for s in seeds)
    arm_all = tuple(_ap(arm[s]) for s in seeds)
    mean_delta = float(np.mean(np.subtract(arm_all, base_all)))
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(replicates):
        images = rng.integers(0, n_img, n_img)
        pairs = rng.integers(0, len(seeds), len(seeds)) if resample_seeds else range(len(seeds))
        d = [_ap(arm[seeds[k]], images) - _ap(baseline[seeds[k]], images) for k in pairs]
        deltas.append(float(np.mean(d)))
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(deltas, [alpha, 1.0 - alpha])
    return BootstrapResult(
        seeds, base_all, arm_all, mean_delta, (float(lo), float(hi)), confidence, replicates, n_img
    )
