"""ATSSAssigner: ATSS positives of the student's head levels as distillation regions."""

from typing import Dict, List

import torch
from detectron2.config import configurable
from torch import Tensor

from ..distill.outputs import Assignment, DetectorOutputs
from ..distill.registries import ASSIGNER_REGISTRY
from ..distill.roles import Assigner
from ..matching.atss import atss_assign, grid_anchors, valid_anchor_mask

__all__ = ["ATSSAssigner"]


@ASSIGNER_REGISTRY.register()
class ATSSAssigner(Assigner):
    """ATSS positives as distillation regions, for any student: square anchors of side
    MODEL.ATSS.ANCHOR_SCALE x stride at every location of the student's head levels (offset 0),
    assigned with :func:`atss_assign` (MODEL.ATSS.TOPK). ``region_masks`` is 1 at positive
    locations (e.g. FeatureMimicDistiller MASK "assigner": LD's "main region" imitation).
    ``extras["matched"]``: per image (R,) assigned box index, -1 for negatives."""

    needs_teacher_predictions = False

    @configurable
    def __init__(self, *, topk: int = 9, anchor_scale: float = 8.0):
        """topk: candidates per level (MODEL.ATSS.TOPK); anchor_scale: the square anchor's side
        in strides (MODEL.ATSS.ANCHOR_SCALE)."""
        super().__init__()
        self.topk = topk
        self.scale = anchor_scale

    @classmethod
    def from_config(cls, cfg, *, student=None, teacher=None):
        return {"topk": cfg.MODEL.ATSS.TOPK, "anchor_scale": cfg.MODEL.ATSS.ANCHOR_SCALE}

    @torch.no_grad()
    def forward(self, student: DetectorOutputs, teacher=None) -> Assignment:
        names = student.head_in_features
        feats = [student.features[f] for f in names]
        sizes = [tuple(f.shape[-2:]) for f in feats]
        strides = [student.feature_shapes[f].stride for f in names]
        device = feats[0].device
        anchors, counts = grid_anchors(sizes, strides, self.scale, device)
        masks: Dict[str, List[Tensor]] = {f: [] for f in names}
        matched_all = []
        for i, gt in enumerate(student.gt_instances):
            valid = valid_anchor_mask(student.images.image_sizes[i], sizes, strides, device=device)
            res = atss_assign(anchors, counts, gt.gt_boxes.tensor, valid, self.topk)
            matched_all.append(res.matched)
            for f, m, (h, w) in zip(names, (res.matched >= 0).split(counts), sizes):
                masks[f].append(m.view(1, h, w).float())
        return Assignment(
            region_masks={f: torch.stack(v) for f, v in masks.items()},
            extras={"matched": matched_all},
        )
