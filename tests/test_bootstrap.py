"""AP from per-image matches against pycocotools, and the paired image/seed bootstrap."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lgdkd.evaluation.bootstrap import (
    average_precision,
    match_images,
    metric_matches,
    paired_bootstrap,
)


def _random_set(rng, n_images=12, n_cats=3, crowd=True):
    images, anns = [], []
    for i in range(n_images):
        images.append({"id": 100 + i, "width": 256, "height": 256, "file_name": f"{i}.jpg"})
        for _ in range(int(rng.integers(0, 8))):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(4, 56, 2)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": int(rng.integers(1, n_cats + 1)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(crowd and rng.uniform() < 0.1),
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 1)]
    return {"images": images, "annotations": anns, "categories": cats}


def _random_detections(rng, gt, quality):
    dets = []
    for a in gt["annotations"]:
        for _ in range(int(rng.integers(0, 3))):  # 0-2 detections near each box
            x, y, w, h = a["bbox"]
            jitter = rng.normal(0, (1 - quality) * 0.4, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.uniform() < 0.8 else int(rng.integers(1, 4))
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": cat,
                    "bbox": [float(v) for v in np.array([x, y, w, h]) + jitter],
                    "score": float(rng.uniform()),
                }
            )
    for img in gt["images"]:  # background detections; ties in score on purpose
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, 220, 2)
            dets.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [float(x), float(y), 20.0, 20.0],
                    "score": float(rng.choice([0.3, 0.5, rng.uniform()])),
                }
            )
    return dets


def _cocoeval(gt, dets, **params):
    """pycocotools' COCOeval of ``dets`` against ``gt``, evaluated, accumulated and summarised
    (``params``: COCOeval parameters to set first)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets) if dets else COCO(), "bbox")
        for key, value in params.items():
            setattr(ev.params, key, value)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _pycocotools_ap50(gt, dets, img_ids=None):
    params = {} if img_ids is None else {"imgIds": img_ids}
    return 100.0 * _cocoeval(gt, dets, **params).stats[1]


@pytest.mark.parametrize("seed", range(6))
def test_ap50_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    gt = _random_set(rng)
    dets = _random_detections(rng, gt, quality=rng.uniform(0.3, 0.95))
    m = match_images(gt, dets)
    assert average_precision(m) == pytest.approx(_pycocotools_ap50(gt, dets), abs=1e-9)
    # on a subset of the images
    keep = [1, 4, 5, 9]
    ids = [gt["images"][k]["id"] for k in keep]
    assert average_precision(m, keep) == pytest.approx(_pycocotools_ap50(gt, dets, ids), abs=1e-9)


def test_max_dets_and_iou_threshold_follow_pycocotools():
    rng = np.random.default_rng(11)
    gt = _random_set(rng, n_images=4)
    dets = _random_detections(rng, gt, quality=0.9)
    m = match_images(gt, dets, max_dets=2)
    ev = _cocoeval(gt, dets, maxDets=[1, 2, 2], iouThrs=np.array([0.5, 0.75]))
    p = ev.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, all areas, maxDets 2
    assert average_precision(m) == pytest.approx(100.0 * p[p > -1].mean(), abs=1e-9)
    m75 = match_images(gt, dets, iou_thresh=0.75, max_dets=2)
    p = ev.eval["precision"][1, :, :, 0, 2]
    assert average_precision(m75) == pytest.approx(100.0 * p[p > -1].mean(), abs=1e-9)


def test_repeated_images_count_twice():
    rng = np.random.default_rng(3)
    gt = _random_set(rng, n_images=3, crowd=False)
    dets = _random_detections(rng, gt, quality=0.6)
    m = match_images(gt, dets)
    # a set made of two copies of every image has the same AP as the set itself
    assert average_precision(m, [0, 1, 2, 0, 1, 2]) == pytest.approx(average_precision(m))
    # drawing image 0 twice weights it: equal to a ground truth with image 0 duplicated
    first = gt["images"][0]["id"]
    dup = json.loads(json.dumps(gt))
    dup["images"].append(dict(gt["images"][0], id=999))
    dup["annotations"] += [
        dict(a, id=10_000 + k, image_id=999)
        for k, a in enumerate(gt["annotations"])
        if a["image_id"] == first
    ]
    dup_dets = dets + [dict(d, image_id=999) for d in dets if d["image_id"] == first]
    assert average_precision(m, [0, 1, 2, 0]) == pytest.approx(
        _pycocotools_ap50(dup, dup_dets), abs=1e-9
    )


def test_unknown_image_is_an_error():
    rng = np.random.default_rng(0)
    gt = _random_set(rng, n_images=2)
    with pytest.raises(ValueError, match="not in the ground truth"):
        match_images(gt, [{"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])


def _runs(gt, rng, quality, seeds):
    return {s: match_images(gt, _random_detections(rng, gt, quality)) for s in seeds}


def test_paired_bootstrap_separates_a_real_gain_from_none():
    rng = np.random.default_rng(5)
    gt = _random_set(rng, n_images=30, crowd=False)
    seeds = (1, 2, 3, 4)
    weak = _runs(gt, rng, 0.2, seeds)
    strong = _runs(gt, rng, 0.95, seeds)
    same = _runs(gt, rng, 0.2, seeds)
    gain = paired_bootstrap(weak, strong, replicates=300)
    assert gain.ci[0] > 0 and gain.mean_delta > 0
    assert gain.ci[0] <= gain.mean_delta <= gain.ci[1]
    none = paired_bootstrap(weak, same, replicates=300)
    assert none.ci[0] < 0 < none.ci[1]
    # resampling the seeds as well widens the interval of the seed-noisy comparison
    images_only = paired_bootstrap(weak, same, replicates=300, resample_seeds=False)
    assert (none.ci[1] - none.ci[0]) >= 0.8 * (images_only.ci[1] - images_only.ci[0])
    # identical arms: every replicate is 0
    zero = paired_bootstrap(weak, weak, replicates=50)
    assert zero.mean_delta == 0 and zero.ci == (0.0, 0.0)


def test_paired_bootstrap_refuses_unpaired_runs():
    rng = np.random.default_rng(1)
    gt = _random_set(rng, n_images=4)
    a = _runs(gt, rng, 0.5, (1, 2))
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap(a, {1: a[1]})
    other = _random_set(rng, n_images=5)
    b = {1: a[1], 2: match_images(other, [])}
    with pytest.raises(ValueError, match="another image set"):
        paired_bootstrap(a, b)


def test_coco_ap_is_the_mean_over_ten_thresholds():
    rng = np.random.default_rng(8)
    gt = _random_set(rng)
    dets = _random_detections(rng, gt, quality=0.8)
    ev = _cocoeval(gt, dets)
    ms = metric_matches(gt, dets, "bbox/AP")
    assert len(ms) == 10
    assert np.mean([average_precision(m) for m in ms]) == pytest.approx(100 * ev.stats[0])
    (m75,) = metric_matches(gt, dets, "AP75")
    assert average_precision(m75) == pytest.approx(100 * ev.stats[2])
    with pytest.raises(ValueError, match="no per-image AP for metric 'APs'"):
        metric_matches(gt, dets, "APs")
    a = {1: ms, 2: ms}
    res = paired_bootstrap(a, a, replicates=20)
    assert res.mean_delta == 0 and res.baseline[0] == pytest.approx(100 * ev.stats[0])
