"""Probabilistic Anchor Assignment (Kim & Lee, ECCV 2020), batched over all ground-truth boxes.

Functions shared by the PAA detector, LAD (the teacher's assignment), and CoLAD (costs chosen
per box and level between two networks). Steps, for a batch of N images, R anchors each (one
per location, level-major), G_i boxes in image i:

1. :func:`preassign`: IoU >= IOU_THRESH with the anchor's best box, plus every anchor whose IoU
   with a box equals that box's best IoU (low-quality matches; "mmdet": such an anchor goes to
   that box, the later box winning; "original" (kkhoot/PAA): it keeps its own best box).
2. :func:`anchor_costs`: for each pre-assigned pair, focal loss summed over the classes against
   the one-hot box label + COST_REG_WEIGHT x GIoU loss of the decoded box. No gradient, fp32.
3. :func:`select_candidates`: per (image, box, level) the TOPK pairs of lowest cost, by a sort
   over the whole batch (no loop over boxes).
4. :func:`gmm_split`: per box, its candidates sorted by cost, a two-component GMM
   (lgdkd.layers.gmm, all boxes at once) and the Fig. 3(c) boundary: j* = the candidate of
   component 0 with the highest mixture log density; positives are the component-0 candidates
   up to j* ("mmdet", LAD/CoLAD) or every candidate up to j* ("original").
   Degenerate boxes, chosen on purpose and the same in both rules except where noted:
   no candidate -> no positive; exactly one candidate -> no positive ("mmdet", which needs two
   samples for the mixture) or that candidate ("original"); no sample in component 0 -> no
   positive ("mmdet") or every candidate ("original"). Costs that are all equal cannot crash
   the fit (centred float64 variances + REG_COVAR).

:func:`paa_assign` chains them and returns :class:`~lgdkd.modeling.matching.targets.DenseTargets`.
"""

from typing import List

import torch
from detectron2.structures import Boxes, pairwise_iou
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor

from ...layers.gmm import fit_gmm_1d
from .targets import DenseTargets

__all__ = [
    "preassign",
    "anchor_costs",
    "select_candidates",
    "gmm_split",
    "paa_assign",
    "level_of_anchors",
]


def level_of_anchors(num_per_level: List[int], device) -> Tensor:
    """(R,) level index of each anchor."""
    return torch.repeat_interleave(
        torch.arange(len(num_per_level), device=device),
        torch.as_tensor(num_per_level, device=device),
    )


@torch.no_grad()
def preassign(
    anchors: Tensor,
    gt_boxes: Tensor,
    valid: Tensor,
    iou_thresh: float = 0.1,
    low_quality: str = "mmdet",
) -> Tensor:
    """(R,) index of the box each anchor is pre-assigned to, -1 for negatives.

    Args:
        anchors: (R, 4); gt_boxes: (G, 4); valid: (R,) bool (invalid anchors never match).
        low_quality: "mmdet" or "original" (see the module docstring). A box whose best IoU
            is 0 (degenerate) gets no low-quality match, unlike MMDetection's
            ``min_pos_iou=0``, which would give it every anchor.
    """
    r = anchors.shape[0]
    out = torch.full((r,), -1, dtype=torch.long, device=anchors.device)
    if gt_boxes.shape[0] == 0:
        return out
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(anchors))  # (G, R)
    iou = torch.where(valid[None], iou, iou.new_full((), -1.0))
    best_iou, best_gt = iou.max(dim=0)
    out = torch.where(best_iou >= iou_thresh, best_gt, out)
    gt_best = iou.max(dim=1).values  # (G,)
    lq = (iou == gt_best[:, None]) & (gt_best[:, None] > 0) & valid[None]
    if low_quality == "mmdet":
        g = torch.arange(1, gt_boxes.shape[0] + 1, device=anchors.device)[:, None]
        last = (lq.long() * g).amax(dim=0) - 1  # the last box with a low-quality match
        out = torch.where(last >= 0, last, out)
    elif low_quality == "original":
        out = torch.where(lq.any(dim=0), best_gt, out)
    else:
        raise ValueError(f"MODEL.PAA.LOW_QUALITY = {low_quality!r}; valid: mmdet, original")
    return out


@torch.no_grad()
def anchor_costs(
    logits: Tensor,
    pred_boxes: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    reg_weight: float = 1.3,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """(P,) PAA cost of P (anchor, box) pairs: focal loss summed over the K classes of
    ``logits`` (P, K) against one-hot ``labels`` (P,) + reg_weight x GIoU loss between
    ``pred_boxes`` and ``gt_boxes`` (P, 4). Computed in fp32."""
    logits = logits.float()
    onehot = torch.zeros_like(logits)
    onehot[torch.arange(len(labels), device=logits.device), labels] = 1.0
    cls = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="none").sum(1)
    box = giou_loss(pred_boxes.float(), gt_boxes.float(), reduction="none")
    return cls + reg_weight * box


def _rank_in_groups(keys: Tensor, values: Tensor):
    """Order of the pairs sorted by ``keys`` then ``values`` (ascending, stable), and the rank
    of each pair within its key group in that order."""
    order = torch.sort(values, stable=True).indices
    order = order[torch.sort(keys[order], stable=True).indices]
    sorted_keys = keys[order]
    _, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=keys.device) - torch.repeat_interleave(starts, counts)
    return order, rank


def select_candidates(box_ids: Tensor, levels: Tensor, costs: Tensor, topk: int) -> Tensor:
    """(P,) bool: whether each pair is among the ``topk`` lowest costs of its (box, level)
    group. ``box_ids`` must be unique across the batch (e.g. offset per image)."""
    keep = torch.zeros_like(costs, dtype=torch.bool)
    if costs.numel() == 0:
        return keep
    num_levels = int(levels.max()) + 1
    order, rank = _rank_in_groups(box_ids * num_levels + levels, costs)
    keep[order[rank < topk]] = True
    return keep


@torch.no_grad()
def gmm_split(
    box_ids: Tensor,
    costs: Tensor,
    num_boxes: int,
    rule: str = "mmdet",
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
) -> Tensor:
    """(C,) bool: which of C candidates (box ``box_ids``, ``costs``) are final positives.

    All boxes are fitted at once on a padded (num_boxes, K_max) float64 matrix of their costs
    sorted in ascending order; see the module docstring for the rule and degenerate cases."""
    if rule not in ("mmdet", "original"):
        raise ValueError(f"MODEL.PAA.SPLIT_RULE = {rule!r}; valid: mmdet, original")
    c = costs.numel()
    positive = torch.zeros(c, dtype=torch.bool, device=costs.device)
    if c == 0:
        return positive
    order, rank = _rank_in_groups(box_ids, costs)
    k_max = int(rank.max()) + 1
    row = box_ids[order]
    x = costs.new_zeros((num_boxes, k_max), dtype=torch.float64)
    mask = torch.zeros((num_boxes, k_max), dtype=torch.bool, device=costs.device)
    x[row, rank] = costs[order].double()
    mask[row, rank] = True
    count = mask.sum(dim=1)
    fit_rows = count >= 2
    sel = torch.zeros_like(mask)
    if bool(fit_rows.any()):
        xf, mf = x[fit_rows], mask[fit_rows]
        gmm = fit_gmm_1d(xf, mf, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
        fg = (gmm.predict(xf) == 0) & mf
        score = gmm.score_samples(xf).masked_fill(~fg, float("-inf"))
        has_fg = fg.any(dim=1)
        j_star = score.argmax(dim=1)  # first maximum: lowest position on ties
        pos = torch.arange(k_max, device=costs.device)[None]
        upto = pos <= j_star[:, None]
        if rule == "mmdet":
            rows_sel = fg & upto & has_fg[:, None]
        else:
            rows_sel = torch.where(has_fg[:, None], upto & mf, mf)
        sel[fit_rows] = rows_sel
    if rule == "original":
        sel |= (count == 1)[:, None] & mask
    positive[order] = sel[row, rank]
    return positive


@torch.no_grad()
def paa_assign(
    anchors: Tensor,
    num_per_level: List[int],
    valid: Tensor,
    gt_instances,
    logits: Tensor,
    pred_boxes: Tensor,
    num_classes: int,
    topk: int = 9,
    iou_thresh: float = 0.1,
    low_quality: str = "mmdet",
    cost_reg_weight: float = 1.3,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    rule: str = "mmdet",
    gmm_max_iter: int = 100,
    gmm_tol: float = 1e-3,
    gmm_reg_covar: float = 1e-6,
    costs_fn=None,
) -> DenseTargets:
    """PAA targets for a batch from the predictions of one network.

    Args:
        anchors: (R, 4); valid: (N, R) bool; gt_instances: N Instances (gt_boxes,
            gt_classes); logits: (N, R, K) class logits; pred_boxes: (N, R, 4) decoded boxes.
        costs_fn: optional ``f(img, anchor_idx, gt_idx, box_ids, levels) -> costs`` replacing
            :func:`anchor_costs` on the pre-assigned pairs (CoLAD's choice between two
            networks); ``img``, ``anchor_idx``, ``gt_idx`` index the pairs.
    """
    n, r = valid.shape
    device = anchors.device
    levels_of = level_of_anchors(num_per_level, device)
    pre = torch.stack(
        [
            preassign(anchors, gt.gt_boxes.tensor, valid[i], iou_thresh, low_quality)
            for i, gt in enumerate(gt_instances)
        ]
    )  # (N, R)
    num_gt = [len(gt) for gt in gt_instances]
    offsets = torch.as_tensor([0] + num_gt, device=device).cumsum(0)
    total = int(offsets[-1])
    img, aidx = (pre >= 0).nonzero(as_tuple=True)
    gidx = pre[img, aidx]
    box_ids = offsets[img] + gidx
    if total > 0:
        all_boxes = torch.cat([gt.gt_boxes.tensor for gt in gt_instances]).float()
        all_labels = torch.cat([gt.gt_classes for gt in gt_instances])
    else:
        all_boxes = anchors.new_zeros((0, 4))
        all_labels = torch.zeros((0,), dtype=torch.long, device=device)
    levels = levels_of[aidx]
    if costs_fn is not None:
        costs = costs_fn(img, aidx, gidx, box_ids, levels)
    else:
        costs = anchor_costs(
            logits[img, aidx],
            pred_boxes[img, aidx],
            all_labels[box_ids],
            all_boxes[box_ids],
            cost_reg_weight,
            focal_alpha,
            focal_gamma,
        )
    cand = select_candidates(box_ids, levels, costs, topk)
    final = torch.zeros_like(cand)
    final[cand] = gmm_split(
        box_ids[cand], costs[cand], total, rule, gmm_max_iter, gmm_tol, gmm_reg_covar
    )
    matched = torch.full((n, r), -1, dtype=torch.long, device=device)
    matched[img[final], aidx[final]] = gidx[final]
    labels = torch.full((n, r), num_classes, dtype=torch.long, device=device)
    labels[img[final], aidx[final]] = all_labels[box_ids[final]]
    matched_boxes = anchors[None].expand(n, -1, -1).clone()
    matched_boxes[img[final], aidx[final]] = all_boxes[box_ids[final]].to(anchors.dtype)
    boxes_with_pos = torch.unique(box_ids[final]).numel()
    stats = {
        "preassigned": float(img.numel()),
        "candidates": float(cand.sum()),
        "positives": float(final.sum()),
        "boxes_without_positive": float(total - boxes_with_pos),
    }
    return DenseTargets(
        anchors=anchors,
        num_per_level=list(num_per_level),
        num_classes=num_classes,
        valid=valid,
        matched=matched,
        labels=labels,
        matched_boxes=matched_boxes,
        stats=stats,
    )
