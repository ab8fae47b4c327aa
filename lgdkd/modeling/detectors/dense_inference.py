"""The steps that GFL's and PAA's inference share (MMDetection's ``get_bboxes`` of both):
per level, keep the TOPK_CANDIDATES_TEST locations with the highest class score before
decoding; over the levels, every (location, class) pair above SCORE_THRESH_TEST is a candidate;
after NMS, the kept candidates become the image's Instances. What differs stays in each
detector: the box decoding (distances vs deltas) and the NMS variant (voting / score voting)."""

from typing import List, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

__all__ = ["candidates", "detections", "top_locations"]


def top_locations(scores: Tensor, k: int, *others: Tensor) -> Tuple[Tensor, ...]:
    """``(scores, *others)`` restricted to the ``k`` rows of one level with the highest
    max-over-classes score (all rows when there are at most ``k``)."""
    if scores.shape[0] <= k:
        return (scores, *others)
    _, keep = scores.amax(dim=1).topk(k)
    return (scores[keep], *(t[keep] for t in others))


def candidates(
    boxes: List[Tensor], scores: List[Tensor], thresh: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """(boxes (M, 4), scores (M,), classes (M,)) of every (location, class) pair of the levels
    whose score is above ``thresh``; a location appears once per class that passes."""
    boxes_, scores_ = torch.cat(boxes), torch.cat(scores)
    loc, cls = (scores_ > thresh).nonzero(as_tuple=True)
    return boxes_[loc], scores_[loc, cls], cls


def detections(image_size: Tuple[int, int], boxes: Tensor, scores: Tensor, classes: Tensor):
    """detectron2's per-image result: ``Instances`` with pred_boxes, scores, pred_classes."""
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = classes
    return result
