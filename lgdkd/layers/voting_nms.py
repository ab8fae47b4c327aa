"""Cluster-NMS and the score-voting Cluster-DIoU-NMS used at test time by Localization
Distillation, vectorised and batched over classes.

* Cluster-NMS comes from Zheng et al., "Enhancing Geometric Factors in Model Learning and
  Inference for Object Detection and Instance Segmentation" (IEEE T-Cybernetics 2021). It
  replaces the sequential loop of greedy NMS by a few matrix iterations: with ``U`` the
  strictly upper-triangular matrix of pairwise overlaps of the score-sorted boxes, it repeats
  ``keep = column_max(B) <= t; B = U * keep[:, None]`` until ``B`` no longer changes. The fixed
  point keeps exactly the boxes that greedy NMS keeps (same overlap metric, same threshold).
  The overlap is the IoU or the DIoU ``IoU - (rho^2 / c^2) ** beta`` (rho: distance between the
  centres, c: diagonal of the smallest enclosing box; beta = 1 is the usual DIoU).
* The score-voting variant, ``voting_cluster_diounms``, is the one of the LD repository
  (HikariTJU/LD, Zheng et al., "Localization Distillation for Dense Object Detection", CVPR
  2022): after Cluster-DIoU-NMS every kept box is replaced by the average of itself and the
  lower-ranked boxes of its class that overlap it by more than a gate (0.7), weighted by
  ``exp(-(1 - overlap)^2 / sigma) * score``; see :func:`voting_cluster_diou_nms`.

Classes are separated by masking the pairwise matrices (pairs of boxes of different classes
never suppress nor vote for each other), not by the official code's trick of shifting the
boxes of class ``k`` by ``4000 * k`` pixels, which lets boxes of different classes interact on
images larger than 4000 px. The only numerical difference on smaller images: in the official
code a box of another class enters every weighted average with a weight of about
``exp(-1 / sigma) * score`` (``e^-40 * score`` by default, its overlap being <= 0 after the
shift), here with a weight of exactly 0. This is negligible for the default sigma (relative
changes of the order of 1e-17 per box) but not for a large sigma (``e^-10`` for sigma = 0.1).
Boxes of the same class that do not pass the gate keep their tiny ``exp(-1 / sigma) * score``
weight, as in the official formula.

Complexity: O(N^2) memory and O(N^2) time per iteration for N candidates (a few iterations in
practice), hence ``max_candidates`` (the highest-scored candidates are kept before any N x N
matrix is built; 3000 candidates take about 36 MB per float32 matrix). Everything runs on the
device of the inputs, in float32 whatever the input dtype; the only host synchronisations are
the convergence test of the iterations and the (data-dependent) size of the output.
"""

import math
from typing import Tuple

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

__all__ = ["pairwise_iou_diou", "cluster_nms", "voting_cluster_diou_nms", "paa_score_voting"]

_METRICS = ("iou", "diou")
_TINY = torch.finfo(torch.float32).tiny


def _check_metric(metric: str, beta: float) -> None:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")


def _check_boxes(name: str, boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")


def pairwise_iou_diou(
    boxes1: Tensor, boxes2: Tensor, *, metric: str = "iou", beta: float = 0.8
) -> Tensor:
    """Pairwise IoU or DIoU of two sets of XYXY boxes: (N, 4), (M, 4) -> (N, M), float32.

    ``metric="iou"``: intersection / union. ``metric="diou"``: ``IoU - (rho^2 / c^2) ** beta``
    with rho the distance between the two centres and c the diagonal of the smallest box
    enclosing both (``beta=1`` is the DIoU of Zheng et al.; LD uses 0.8). Degenerate pairs
    (union or enclosing diagonal of 0) count 0 for the corresponding ratio instead of NaN.
    """
    _check_metric(metric, beta)
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    if boxes1.device != boxes2.device:
        raise ValueError(
            f"boxes1 and boxes2 must be on the same device, got {boxes1.device} and "
            f"{boxes2.device}"
        )
    b1 = boxes1.float()[:, None, :]  # (N, 1, 4)
    b2 = boxes2.float()[None, :, :]  # (1, M, 4)
    area1 = (b1[..., 2] - b1[..., 0]).clamp(min=0) * (b1[..., 3] - b1[..., 1]).clamp(min=0)
    area2 = (b2[..., 2] - b2[..., 0]).clamp(min=0) * (b2[..., 3] - b2[..., 1]).clamp(min=0)
    inter_lt = torch.maximum(b1[..., :2], b2[..., :2])
    inter_rb = torch.minimum(b1[..., 2:], b2[..., 2:])
    inter_wh = (inter_rb - inter_lt).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / union.clamp(min=_TINY)
    if metric == "iou":
        return iou
    centre1 = (b1[..., :2] + b1[..., 2:]) * 0.5
    centre2 = (b2[..., :2] + b2[..., 2:]) * 0.5
    rho2 = (centre1 - centre2).pow(2).sum(-1)
    outer_wh = torch.maximum(b1[..., 2:], b2[..., 2:]) - torch.minimum(b1[..., :2], b2[..., :2])
    c2 = outer_wh.pow(2).sum(-1)
    return iou - (rho2 / c2.clamp(min=_TINY)).pow(beta)


def _check_inputs(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> None:
    _check_boxes("boxes", boxes)
    n = boxes.shape[0]
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != n:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have shape ({n},) to match boxes, got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating-point tensor, got {scores.dtype}")
    if not isinstance(classes, Tensor) or classes.dim() != 1 or classes.shape[0] != n:
        shape = tuple(classes.shape) if isinstance(classes, Tensor) else type(classes).__name__
        raise ValueError(f"classes must have shape ({n},) to match boxes, got {shape}")
    if classes.is_floating_point() or classes.is_complex():
        raise ValueError(f"classes must be an integer tensor, got {classes.dtype}")
    if not (scores.device == boxes.device == classes.device):
        raise ValueError(
            "boxes, scores and classes must be on the same device, got "
            f"{boxes.device}, {scores.device} and {classes.device}"
        )
    if not (isinstance(iou_threshold, (int, float)) and 0.0 <= iou_threshold <= 1.0):
        raise ValueError(f"iou_threshold must be a number in [0, 1], got {iou_threshold!r}")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _sorted_candidates(scores: Tensor, max_candidates: int) -> Tensor:
    """Indices of the ``max_candidates`` highest scores, by descending score (stable)."""
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return order[:max_candidates]


def _cluster_keep(
    overlaps: Tensor, same_class: Tensor, iou_threshold: float, max_iterations: int
) -> Tensor:
    """Boolean keep mask of Cluster-NMS on the (N, N) overlaps of score-sorted boxes."""
    upper = (overlaps * same_class).triu_(diagonal=1)
    b = upper
    for _ in range(max_iterations):
        a = b
        keep = a.max(dim=0).values <= iou_threshold
        b = upper * keep[:, None]
        if a.equal(b):
            break
    return b.max(dim=0).values <= iou_threshold


def cluster_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float,
    *,
    metric: str = "iou",
    beta: float = 0.8,
    max_candidates: int = 3000,
    max_iterations: int = 1000,
) -> Tensor:
    """Class-aware Cluster-NMS; same result as greedy NMS per class with the same metric.

    Args:
        boxes: (N, 4) XYXY floating-point boxes.
        scores: (N,) floating-point scores.
        classes: (N,) integer class ids; boxes of different classes never suppress each other.
        iou_threshold: a box is suppressed by a kept higher-scored box of its class when their
            overlap is strictly greater than this value, in [0, 1].
        metric: "iou" or "diou" (``IoU - (rho^2 / c^2) ** beta``).
        beta: exponent of the DIoU penalty (only for ``metric="diou"``).
        max_candidates: only the ``max_candidates`` highest-scored boxes are considered
            (the others are dropped) since the method builds N x N matrices.
        max_iterations: cap of the Cluster-NMS iterations (they converge in at most N, in a
            few in practice).

    Returns:
        int64 indices into the inputs of the kept boxes, by descending score (ties: input
        order).
    """
    _check_inputs(boxes, scores, classes, iou_threshold)
    _check_metric(metric, beta)
    _check_positive_int("max_candidates", max_candidates)
    _check_positive_int("max_iterations", max_iterations)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = _sorted_candidates(scores, max_candidates)
    sorted_boxes = boxes[order]
    sorted_classes = classes[order]
    overlaps = pairwise_iou_diou(sorted_boxes, sorted_boxes, metric=metric, beta=beta)
    same_class = sorted_classes[:, None] == sorted_classes[None, :]
    keep = _cluster_keep(overlaps, same_class, iou_threshold, max_iterations)
    return order[keep]


def voting_cluster_diou_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float = 0.6,
    *,
    beta: float = 0.8,
    voting: bool = True,
    vote_gate: float = 0.7,
    vote_sigma: float = 0.025,
    max_candidates: int = 3000,
    max_detections: int = 100,
    metric: str = "diou",
) -> Tuple[Tensor, Tensor]:
    """Class-aware Cluster-DIoU-NMS followed by score voting (LD's ``voting_cluster_diounms``).

    After :func:`cluster_nms` (``metric``, ``beta``, ``iou_threshold``), with ``V`` the
    overlaps of the score-sorted boxes restricted to the upper triangle *including* the
    diagonal (``V_ii = 1``), the kept box i becomes ``sum_j w_ij box_j / sum_j w_ij`` with
    ``w_ij = exp(-(1 - V_ij * [V_ij > vote_gate])^2 / vote_sigma) * score_j`` over the
    candidates j of its class, i.e. weight ``score_i`` for itself, about
    ``exp(-(1 - V_ij)^2 / sigma) * score_j`` for the lower-ranked boxes of its class
    overlapping it by more than the gate, and ``exp(-1 / sigma) * score_j`` (negligible)
    for the other boxes of its class. Boxes of other classes get weight exactly 0 (the
    official code gets ``exp(-1 / sigma) * score_j`` from its 4000-px class shift). A kept box
    whose weights all underflow to 0 (score 0) keeps its original coordinates.

    Args:
        boxes, scores, classes: (N, 4) XYXY, (N,), (N,) integer; as in :func:`cluster_nms`.
        iou_threshold: NMS threshold on the overlap, in [0, 1].
        beta: exponent of the DIoU penalty.
        voting: if False, the kept boxes are returned unchanged (plain Cluster-DIoU-NMS).
        vote_gate: overlaps at most this value (in [0, 1]) do not vote.
        vote_sigma: > 0, width of the voting weight.
        max_candidates: only the highest-scored ``max_candidates`` boxes are considered.
        max_detections: at most this many results (the highest-scored); <= 0: no limit.
        metric: "diou" (LD's choice) or "iou".

    Returns:
        ``(keep, out_boxes)``: int64 indices into the inputs of the kept boxes by descending
        score (their scores and classes are ``scores[keep]``, ``classes[keep]``), and the
        (K, 4) output boxes in ``boxes.dtype`` (voted when ``voting``).
    """
    _check_inputs(boxes, scores, classes, iou_threshold)
    _check_metric(metric, beta)
    _check_positive_int("max_candidates", max_candidates)
    if isinstance(max_detections, bool) or not isinstance(max_detections, int):
        raise ValueError(f"max_detections must be an integer, got {max_detections!r}")
    if not (isinstance(vote_gate, (int, float)) and 0.0 <= vote_gate <= 1.0):
        raise ValueError(f"vote_gate must be a number in [0, 1], got {vote_gate!r}")
    if not (isinstance(vote_sigma, (int, float)) and math.isfinite(vote_sigma) and vote_sigma > 0):
        raise ValueError(f"vote_sigma must be a finite number > 0, got {vote_sigma!r}")
    if boxes.shape[0] == 0:
        return (
            torch.zeros(0, dtype=torch.int64, device=boxes.device),
            boxes.new_zeros((0, 4)),
        )

    order = _sorted_candidates(scores, max_candidates)
    sorted_boxes = boxes[order].float()
    sorted_classes = classes[order]
    overlaps = pairwise_iou_diou(sorted_boxes, sorted_boxes, metric=metric, beta=beta)
    same_class = sorted_classes[:, None] == sorted_classes[None, :]
    keep_mask = _cluster_keep(overlaps, same_class, iou_threshold, max_iterations=1000)
    kept = keep_mask.nonzero().squeeze(1)  # sorted positions, by descending score
    if max_detections > 0:
        kept = kept[:max_detections]
    keep = order[kept]
    if not voting:
        return keep, boxes[keep]

    # rows of the kept boxes only: the rows of the suppressed ones are zeroed and unused
    n = sorted_boxes.shape[0]
    positions = torch.arange(n, device=boxes.device)
    votes = overlaps[kept] * same_class[kept]
    votes = votes * (positions[None, :] >= kept[:, None])  # upper triangle, with diagonal
    votes[torch.arange(kept.numel(), device=boxes.device), kept] = 1.0
    gated = votes * (votes > vote_gate)
    weights = torch.exp(-((1.0 - gated) ** 2) / vote_sigma) * scores[order].float()[None, :]
    weights = weights * same_class[kept]  # other classes: exactly 0 (official: ~e^-40 * s_j)
    total = weights.sum(dim=1)
    # one coordinate at a time: (K, N) memory and exact float32 sums (no TF32 matmul)
    voted = torch.stack([(weights * sorted_boxes[:, c]).sum(dim=1) for c in range(4)], dim=1)
    voted = torch.where(
        (total > 0)[:, None], voted / total.clamp(min=_TINY)[:, None], sorted_boxes[kept]
    )
    return keep, voted.to(boxes.dtype)


def paa_score_voting(
    kept_boxes: Tensor,
    kept_classes: Tensor,
    cand_boxes: Tensor,
    cand_scores: Tensor,
    cand_classes: Tensor,
    sigma: float = 0.025,
    min_iou: float = 0.01,
) -> Tensor:
    """PAA's score voting (Kim & Lee, ECCV 2020), vectorised: each kept box becomes
    ``sum_n p_n box_n / sum_n p_n`` over the candidates n of its class with IoU > ``min_iou``,
    ``p_n = exp(-(1 - IoU)^2 / sigma) * score_n``; scores are unchanged. A kept box without
    such a neighbour (weights all 0) keeps its coordinates; no detection -> no work.

    Args:
        kept_boxes, kept_classes: (D, 4), (D,) the boxes kept by NMS.
        cand_boxes, cand_scores, cand_classes: (M, 4), (M,), (M,) the pre-NMS candidates.
    Returns:
        (D, 4) voted boxes.
    """
    if kept_boxes.numel() == 0 or cand_boxes.numel() == 0:
        return kept_boxes
    iou = pairwise_iou(Boxes(kept_boxes), Boxes(cand_boxes))  # (D, M)
    same = kept_classes[:, None] == cand_classes[None, :]
    w = torch.exp(-((1 - iou) ** 2) / sigma) * cand_scores[None, :]
    w = torch.where(same & (iou > min_iou), w, torch.zeros_like(w))
    total = w.sum(dim=1, keepdim=True)
    voted = (w @ cand_boxes) / total.clamp(min=1e-12)
    return torch.where(total > 0, voted, kept_boxes)
