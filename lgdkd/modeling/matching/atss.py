"""ATSS label assignment (Zhang et al., CVPR 2020, "Bridging the Gap Between Anchor-based and
Anchor-free Detection via Adaptive Training Sample Selection") and LD's Valuable Localization
Region (Zheng et al., CVPR 2022; HikariTJU/LD ``ATSSAssigner.get_vlr_region``).

Shape shorthand: R anchors of one image over all levels (level-major, row-major inside a
level, one anchor per location), G ground-truth boxes of that image, L levels.

:func:`atss_assign` follows MMDetection's ``ATSSAssigner`` (the assigner GFocal and LD were
trained with):

1. IoU(anchor, gt) and the distance between anchor centres and box centres, valid anchors only;
2. per level, the ``topk`` anchors nearest to each box centre (fewer when the level has fewer
   valid anchors): up to L * topk candidates per box;
3. per box, threshold = mean + std (unbiased) of its candidates' IoUs;
4. a candidate is positive when its IoU >= the threshold and its centre lies strictly inside the
   box (by more than 0.01 px);
5. an anchor positive for several boxes goes to the one of highest IoU.

Chosen behaviour in degenerate cases: a box with a single candidate (a tiny image) has std 0
(MMDetection's gives NaN and hence no positive); a box of zero area gets no positive; an image
without boxes is all negative.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

__all__ = [
    "ATSSResult",
    "atss_assign",
    "pairwise_overlap",
    "vlr_region",
    "grid_anchors",
    "valid_anchor_mask",
]


@dataclass
class ATSSResult:
    """ATSS assignment of one image.

    Attributes:
        matched: (R,) int64, index of the assigned box, -1 for negatives.
        ious: (R,) IoU of each anchor with its assigned box (0 for negatives).
        thresholds: (G,) the per-box IoU threshold (mean + std of its candidates).
    """

    matched: Tensor
    ious: Tensor
    thresholds: Tensor


def _centers(boxes: Tensor) -> Tensor:
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


@torch.no_grad()
def atss_assign(
    anchors: Tensor,
    num_per_level: List[int],
    gt_boxes: Tensor,
    valid: Optional[Tensor] = None,
    topk: int = 9,
) -> ATSSResult:
    """ATSS on one image.

    Args:
        anchors: (R, 4) XYXY anchor boxes, level-major.
        num_per_level: anchors of each level (sums to R).
        gt_boxes: (G, 4) XYXY.
        valid: (R,) bool, False for anchors on the batch padding (never candidates, always
            negative); None = all valid.
        topk: candidates per level and box.
    """
    r, g = anchors.shape[0], gt_boxes.shape[0]
    if sum(num_per_level) != r:
        raise ValueError(f"num_per_level {num_per_level} does not sum to {r} anchors")
    device = anchors.device
    if valid is None:
        valid = torch.ones(r, dtype=torch.bool, device=device)
    matched = torch.full((r,), -1, dtype=torch.int64, device=device)
    if g == 0:
        return ATSSResult(matched, anchors.new_zeros(r), anchors.new_zeros(0))
    ious = pairwise_iou(Boxes(anchors), Boxes(gt_boxes))  # (R, G)
    # computed directly, as MMDetection does: torch.cdist's matrix-product path (used from 25
    # points on) loses ~0.03 px at COCO coordinates in float32 and reorders near-ties
    dist = (_centers(anchors)[:, None, :] - _centers(gt_boxes)[None, :, :]).pow(2).sum(-1).sqrt()
    dist = dist.masked_fill(~valid[:, None], float("inf"))
    candidates = []
    start = 0
    for n in num_per_level:
        n_valid = valid[start : start + n]
        # MMDetection takes min(topk, valid anchors of the level); invalid anchors sit at +inf,
        # after every valid one, so taking min(topk, n) and dropping the invalid picks is the
        # same without counting on the host
        k = min(topk, n)
        if k > 0:
            _, idx = dist[start : start + n].topk(k, dim=0, largest=False)  # (k, G)
            ok = torch.gather(n_valid[:, None].expand(n, g), 0, idx)  # drop picked padding
            candidates.append((idx + start, ok))
        start += n
    cand_idx = torch.cat([c[0] for c in candidates], dim=0)  # (C, G)
    cand_ok = torch.cat([c[1] for c in candidates], dim=0)
    cand_iou = torch.gather(ious, 0, cand_idx)
    count = cand_ok.sum(dim=0).clamp(min=1).to(ious.dtype)  # (G,)
    mean = (cand_iou * cand_ok).sum(dim=0) / count
    var = (((cand_iou - mean) ** 2) * cand_ok).sum(dim=0) / (count - 1).clamp(min=1)
    thresholds = mean + var.sqrt()

    centers = _centers(anchors)[cand_idx]  # (C, G, 2)
    x1, y1, x2, y2 = gt_boxes.unbind(dim=1)
    inside = (
        torch.stack(
            [
                centers[..., 0] - x1,
                centers[..., 1] - y1,
                x2 - centers[..., 0],
                y2 - centers[..., 1],
            ],
            dim=-1,
        ).amin(dim=-1)
        > 0.01
    )
    positive = cand_ok & inside & (cand_iou >= thresholds[None, :])

    overlaps = torch.full_like(ious, -float("inf"))
    gt_index = torch.arange(g, device=device).expand_as(cand_idx)
    overlaps[cand_idx[positive], gt_index[positive]] = cand_iou[positive]
    best, arg = overlaps.max(dim=1)
    is_pos = best > -float("inf")
    matched = torch.where(is_pos, arg, matched)
    return ATSSResult(matched, torch.where(is_pos, best, anchors.new_zeros(r)), thresholds)


def pairwise_overlap(anchors: Tensor, boxes: Tensor, metric: str) -> Tensor:
    """(R, 4) x (G, 4) XYXY -> (R, G) overlap.

    ``metric``: "iou"; "diou" (IoU - rho^2 / c^2, rho the distance between centres, c the
    diagonal of the enclosing box); "legacy_iof_diou" (the LD code's ``bbox_overlaps(mode=
    'diou')``: intersection / area(anchor) - rho^2 / c^2, i.e. the union replaced by the
    anchor's area).
    """
    if metric not in ("iou", "diou", "legacy_iof_diou"):
        raise ValueError(f"overlap metric {metric!r}; valid: iou, diou, legacy_iof_diou")
    a, b = anchors[:, None, :], boxes[None, :, :]
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(dim=-1)
    eps = torch.finfo(torch.float32).eps
    if metric == "legacy_iof_diou":
        base = inter / area_a.clamp(min=eps)
    else:
        base = inter / (area_a + area_b - inter).clamp(min=eps)
    if metric == "iou":
        return base
    center_a = (a[..., :2] + a[..., 2:]) / 2
    center_b = (b[..., :2] + b[..., 2:]) / 2
    rho2 = ((center_a - center_b) ** 2).sum(dim=-1)
    enclose = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    c2 = (enclose**2).sum(dim=-1).clamp(min=eps)
    return base - rho2 / c2


@torch.no_grad()
def vlr_region(
    anchors: Tensor,
    gt_boxes: Tensor,
    thresholds: Tensor,
    valid: Optional[Tensor] = None,
    alpha: float = 0.25,
    metric: str = "legacy_iof_diou",
) -> Tuple[Tensor, Tensor]:
    """LD's Valuable Localization Region of one image.

    An anchor is in the VLR of box g when ``alpha * thr_g <= D(anchor, g) < thr_g`` (thr_g the
    ATSS threshold of g, D the ``metric`` of :func:`pairwise_overlap`); every valid anchor of
    every level is a candidate (no top-k, no centre test; the region may overlap the ATSS
    positives). Among several qualifying boxes the one of highest IoU is taken.

    Returns:
        weights: (R,) IoU with the chosen box (0 outside the region).
        matched: (R,) int64 index of the chosen box, -1 outside.
    """
    r, g = anchors.shape[0], gt_boxes.shape[0]
    matched = torch.full((r,), -1, dtype=torch.int64, device=anchors.device)
    if g == 0:
        return anchors.new_zeros(r), matched
    d = pairwise_overlap(anchors, gt_boxes, metric)
    ious = pairwise_overlap(anchors, gt_boxes, "iou")
    inside = (d >= alpha * thresholds[None, :]) & (d < thresholds[None, :])
    if valid is not None:
        inside &= valid[:, None]
    best, arg = ious.masked_fill(~inside, -1.0).max(dim=1)
    hit = inside.any(dim=1)
    return torch.where(hit, best, anchors.new_zeros(r)), torch.where(hit, arg, matched)


def grid_anchors(
    sizes: List[Tuple[int, int]], strides: List[int], scale: float, device=None
) -> Tuple[Tensor, List[int]]:
    """Square anchors of side ``scale * stride`` centred at (x * stride, y * stride) (offset 0,
    MMDetection's layout) for levels of ``sizes`` (H, W); level-major. Returns (R, 4), counts."""
    boxes = []
    for (h, w), s in zip(sizes, strides):
        ys = torch.arange(h, device=device, dtype=torch.float32) * s
        xs = torch.arange(w, device=device, dtype=torch.float32) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        half = scale * s / 2
        c = torch.stack([cx, cy], dim=-1).reshape(-1, 2)
        boxes.append(torch.cat([c - half, c + half], dim=1))
    return torch.cat(boxes, dim=0), [h * w for h, w in sizes]


def valid_anchor_mask(
    image_size: Tuple[int, int],
    sizes: List[Tuple[int, int]],
    strides: List[int],
    size_divisibility: int = 0,
    device=None,
) -> Tensor:
    """(R,) bool: the anchor's cell lies within ceil(pad / stride) of the image's own size
    padded to ``size_divisibility`` (MMDetection's valid flags); cells on the padding that only
    the batch's larger images need are invalid."""
    h, w = image_size
    if size_divisibility > 1:
        d = size_divisibility
        h, w = -(-h // d) * d, -(-w // d) * d
    masks = []
    for (fh, fw), s in zip(sizes, strides):
        vh, vw = min(fh, -(-h // s)), min(fw, -(-w // s))
        m = torch.zeros(fh, fw, dtype=torch.bool, device=device)
        m[:vh, :vw] = True
        masks.append(m.reshape(-1))
    return torch.cat(masks)
