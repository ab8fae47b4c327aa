"""HEAD's proposals: the student RetinaNet's detections as the assistant's RoIs, each
remembering the anchor it came from; ground-truth boxes added with a marker."""

from typing import List, Tuple

import torch
from detectron2.layers import batched_nms, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from torch import Tensor

__all__ = ["GT_LEVEL", "retina_proposals", "gt_with_markers"]


GT_LEVEL = -1  # ``anchor_pos`` level of a ground-truth row: it came from no anchor


@torch.no_grad()
def retina_proposals(
    anchors: List[Boxes],
    logits: List[Tensor],
    deltas: List[Tensor],
    image_sizes: List[Tuple[int, int]],
    box2box_transform: Box2BoxTransform,
    num_classes: int,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_size: float = 0.0,
) -> List[Instances]:
    """Class-agnostic proposals from RetinaNet outputs, each remembering its anchor.

    Args:
        anchors: per level, the (H_l * W_l * A, 4) anchors in (y, x, a) order (detectron2's
            anchor generator order).
        logits: per level (N, A * K, H_l, W_l) class logits (class index innermost).
        deltas: per level (N, A * 4, H_l, W_l) box deltas.

    Per image and level: score = sigmoid(max over K of the logit); the top ``pre_nms_topk``
    anchors (no threshold) are decoded with their own anchors, clipped to the image, boxes
    with a side <= ``min_size`` dropped; NMS at ``nms_thresh`` runs per level; the
    ``post_nms_topk`` best remain, in descending score.

    Returns:
        per image an ``Instances`` with ``proposal_boxes`` (R, 4), ``objectness_logits`` (R,)
        (the max logit) and ``anchor_pos`` (R, 4) int64 rows (level, y, x, a).
    """
    results = []
    n = logits[0].shape[0]
    flat = []
    for lvl, (lg, dl, anc) in enumerate(zip(logits, deltas, anchors)):
        _, ak, h, w = lg.shape
        a = ak // num_classes
        if a * num_classes != ak or dl.shape[1] != a * 4 or len(anc) != h * w * a:
            raise ValueError(
                f"HEAD proposals, level {lvl}: logits {tuple(lg.shape)}, deltas "
                f"{tuple(dl.shape)} and {len(anc)} anchors do not agree for {num_classes} "
                "classes."
            )
        scores = lg.detach().view(n, a, num_classes, h, w).permute(0, 3, 4, 1, 2).amax(-1)
        d = dl.detach().view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        flat.append((scores.reshape(n, -1), d, anc.tensor, h, w, a))
    for i in range(n):
        boxes, scores, pos = [], [], []
        for lvl, (sc, d, anc, h, w, a) in enumerate(flat):
            k = min(pre_nms_topk, sc.shape[1])
            top, idx = sc[i].topk(k)
            boxes.append(box2box_transform.apply_deltas(d[i, idx], anc[idx]))
            scores.append(top)
            pos.append(
                torch.stack(
                    [torch.full_like(idx, lvl), idx // (w * a), (idx // a) % w, idx % a], dim=1
                )
            )
        b = Boxes(cat(boxes))
        s, p = cat(scores), cat(pos)
        b.clip(image_sizes[i])
        keep = b.nonempty(threshold=min_size) & torch.isfinite(b.tensor).all(dim=1)
        keep &= torch.isfinite(s)
        b, s, p = b[keep], s[keep], p[keep]
        keep = batched_nms(b.tensor, s, p[:, 0], nms_thresh)[:post_nms_topk]
        inst = Instances(image_sizes[i])
        inst.proposal_boxes = b[keep]
        inst.objectness_logits = s[keep]
        inst.anchor_pos = p[keep]
        results.append(inst)
    return results


def gt_with_markers(targets: List[Instances]) -> List[Instances]:
    """Copies of ``targets`` with ``anchor_pos`` = (-1, -1, -1, gt_index) per box, so that the
    ground-truth rows detectron2 appends to the proposals are marked as anchor-less."""
    out = []
    for t in targets:
        t = Instances(t.image_size, **t.get_fields())
        idx = torch.arange(len(t), device=t.gt_boxes.device)
        marker = torch.full((len(t), 3), GT_LEVEL, dtype=torch.long, device=idx.device)
        t.anchor_pos = torch.cat([marker, idx[:, None]], dim=1)
        out.append(t)
    return out
