"""PAA's candidate selection + GMM split: lgdkd's batched version against a per-box sklearn loop
written the way MMDetection's PAAHead does it, on the same real candidate costs, side by side.

    python tools/benchmark_paa_assign.py                       # DeepForest train tiles, CPU
    python tools/benchmark_paa_assign.py \
        --weights output/LAD/DeepForest/paa_EffLite0_teacher/model_final.pth
    python tools/benchmark_paa_assign.py --device cuda --batch 8

For each batch of DeepForest training tiles, a PAA detector (configs/LAD/DeepForest/
paa_EffLite0.yaml with --weights, random weights if none) predicts; the pre-assignment and the
costs of the pre-assigned (anchor, box) pairs are computed once. Then, timed separately on those
same costs:

* batched: ``select_candidates`` + ``gmm_split`` (one sort, one batched float64 EM);
* loop (MMDetection): per box, per level top-9 with torch, sort, then
  ``sklearn.mixture.GaussianMixture`` with MMDetection's arguments (covariance "diag" on the
  float32 costs) and the MMDetection rule; a fit that raises is counted and the box gets no
  positive (as CoLAD's try/except);
* loop (full, float64): the same with covariance "full" on float64, the reference the batched
  fit follows.

Printed: total and median per-batch seconds, the speed ratio, and the share of boxes whose
positive set is identical between the batched version and each loop.
"""

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from benchmark import load_cfg  # noqa: E402

import lgdkd  # noqa: E402,F401  (before detectron2: serves its compiled ops if it has none)

CONFIG = os.path.join(ROOT, "configs", "LAD", "DeepForest", "paa_EffLite0.yaml")


def batches(cfg, size, count):
    from detectron2.data import DatasetCatalog

    from lgdkd.data import CheckedDatasetMapper

    mapper = CheckedDatasetMapper(cfg, True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    torch.manual_seed(0)
    for b in range(count):
        chunk = dicts[b * size : (b + 1) * size]
        if len(chunk) < size:
            return
        yield [mapper(d) for d in chunk]


@torch.no_grad()
def pair_costs(model, batch):
    """(box ids, levels, costs) of the pre-assigned pairs of a batch, and the box count."""
    from lgdkd.modeling.matching.paa import (
        anchor_costs,
        level_of_anchors,
        preassign,
    )

    images = model.preprocess_image(batch)
    gt = [x["instances"].to(images.tensor.device) for x in batch]
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    preds = model.head(feats)
    anchors, counts = model.anchors(feats)
    valid = model.valid_mask(feats, [g.image_size for g in gt])
    logits, deltas, _ = model.flatten_predictions(preds)
    boxes = model.decode(deltas, anchors[None])
    kw = model.assign_kwargs
    pre = torch.stack(
        [
            preassign(anchors, g.gt_boxes.tensor, valid[i], kw["iou_thresh"], kw["low_quality"])
            for i, g in enumerate(gt)
        ]
    )
    offsets = torch.as_tensor([0] + [len(g) for g in gt], device=anchors.device).cumsum(0)
    img, aidx = (pre >= 0).nonzero(as_tuple=True)
    box_ids = offsets[img] + pre[img, aidx]
    all_boxes = torch.cat([g.gt_boxes.tensor for g in gt])
    all_labels = torch.cat([g.gt_classes for g in gt])
    costs = anchor_costs(
        logits[img, aidx],
        boxes[img, aidx],
        all_labels[box_ids],
        all_boxes[box_ids],
        kw["cost_reg_weight"],
        kw["focal_alpha"],
        kw["focal_gamma"],
    )
    levels = level_of_anchors(counts, anchors.device)[aidx]
    return box_ids, levels, costs, int(offsets[-1])


def batched(box_ids, levels, costs, num_boxes, topk):
    from lgdkd.modeling.matching.paa import gmm_split, select_candidates

    cand = select_candidates(box_ids, levels, costs, topk)
    final = torch.zeros_like(cand)
    final[cand] = gmm_split(box_ids[cand], costs[cand], num_boxes)
    if costs.is_cuda:
        torch.cuda.synchronize()
    return final


def loop(box_ids, levels, costs, num_boxes, topk, covariance, dtype):
    """Per box, MMDetection's PAAHead.paa_reassign + gmm_separation_scheme."""
    from sklearn.mixture import GaussianMixture

    final = torch.zeros_like(costs, dtype=torch.bool)
    failures = 0
    num_levels = int(levels.max()) + 1 if levels.numel() else 0
    for g in range(num_boxes):
        idx_g, cost_g = [], []
        mask_g = box_ids == g
        for lv in range(num_levels):
            idx = (mask_g & (levels == lv)).nonzero().flatten()
            if idx.numel() == 0:
                continue
            value, k = costs[idx].topk(min(idx.numel(), topk), largest=False)
            idx_g.append(idx[k])
            cost_g.append(value)
        if not idx_g:
            continue
        idx_g, cost_g = torch.cat(idx_g), torch.cat(cost_g)
        if idx_g.numel() < 2:
            continue
        cost_g, order = cost_g.sort()
        idx_g = idx_g[order]
        x = cost_g.view(-1, 1).cpu().numpy().astype(dtype)
        lo, hi = x.min(), x.max()
        precisions = np.ones((2, 1, 1)) if covariance == "full" else np.ones((2, 1))
        gmm = GaussianMixture(
            2,
            weights_init=np.array([0.5, 0.5]),
            means_init=np.array([lo, hi]).reshape(2, 1),
            precisions_init=precisions,
            covariance_type=covariance,
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gmm.fit(x)
        except ValueError:
            failures += 1
            continue
        comp = torch.from_numpy(gmm.predict(x))
        score = torch.from_numpy(gmm.score_samples(x))
        fg = comp == 0
        if fg.any():
            j = int(score[fg].argmax())
            final[idx_g[fg.to(idx_g.device)][: j + 1]] = True
    return final, failures


def same_sets(a, b, box_ids, num_boxes):
    """Boxes whose positive sets are identical in ``a`` and ``b``."""
    diff = torch.zeros(num_boxes, dtype=torch.long, device=box_ids.device)
    diff.index_add_(0, box_ids, (a != b).long())
    return int((diff == 0).sum())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=CONFIG)
    p.add_argument("--weights", default="", help="PAA checkpoint (default: random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=16)
    args = p.parse_args(argv)

    from detectron2.modeling import build_model

    import lgdkd.modeling  # noqa: F401
    from lgdkd.checkpoint import load_strict

    cfg = load_cfg(args.config_file, args.device)
    torch.manual_seed(0)
    model = build_model(cfg)
    if args.weights:
        load_strict(model, args.weights, "PAA weights (--weights)", strip_prefix="student.")
    model.eval()
    topk = model.assign_kwargs["topk"]
    t_batched, t_diag, t_full = [], [], []
    boxes = pairs = cands = same_diag = same_full = fail_diag = fail_full = 0
    for batch in batches(cfg, args.batch, args.batches):
        box_ids, levels, costs, n = pair_costs(model, batch)
        t0 = time.perf_counter()
        ours = batched(box_ids, levels, costs, n, topk)
        t_batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        diag, f = loop(box_ids, levels, costs, n, topk, "diag", np.float32)
        t_diag.append(time.perf_counter() - t0)
        fail_diag += f
        t0 = time.perf_counter()
        full, f = loop(box_ids, levels, costs.double(), n, topk, "full", np.float64)
        t_full.append(time.perf_counter() - t0)
        fail_full += f
        boxes += n
        pairs += costs.numel()
        from lgdkd.modeling.matching.paa import select_candidates

        cands += int(select_candidates(box_ids, levels, costs, topk).sum())
        same_diag += same_sets(ours, diag, box_ids, n)
        same_full += same_sets(ours, full, box_ids, n)
        print(
            f"batch {len(t_batched)}: {n} boxes, {costs.numel()} pairs, batched "
            f"{t_batched[-1]:.4f} s, loop diag {t_diag[-1]:.3f} s, loop full {t_full[-1]:.3f} s",
            flush=True,
        )
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"\n{len(t_batched)} batches of {args.batch} DeepForest tiles, {boxes} boxes, {pairs} "
        f"pre-assigned pairs, {cands} candidates; {device}, {torch.get_num_threads()} threads; "
        f"weights: {args.weights or 'random'}\n"
    )
    print("| assignment | total s | median s/batch | x batched | identical positive sets |")
    print("|---|---|---|---|---|")
    tb = sum(t_batched)
    rows = [
        ("batched (lgdkd)", t_batched, None, None),
        ("per-box sklearn loop, diag float32 (MMDetection)", t_diag, same_diag, fail_diag),
        ("per-box sklearn loop, full float64", t_full, same_full, fail_full),
    ]
    for name, times, same, fails in rows:
        ident = "-" if same is None else f"{same}/{boxes} ({100.0 * same / max(boxes, 1):.2f}%)"
        if fails:
            ident += f"; {fails} fits raised"
        print(
            f"| {name} | {sum(times):.3f} | {statistics.median(times):.4f} | "
            f"{sum(times) / tb:.1f} | {ident} |"
        )


if __name__ == "__main__":
    main()
