"""Soft-label distillation for PAA students (the "Soft-Label KD" rows of LAD, and the soft part
of SoLAD; Nguyen et al., WACV 2022, arXiv:2108.10520; cybercore-co-ltd/CoLAD ``PAA_KD_Head``).

A frozen PAA teacher and a PAA student see the same padded batch with the same anchors. With
p = sigmoid(student logit), t = sigmoid(teacher logit) and ``focal_binary_kl`` (|t - p|^gamma x
binary KL, gamma = MODEL.DISTILL.SOFT_LABEL.GAMMA, no temperature):

* region: valid anchors whose teacher-decoded box (clipped to the image) has IoU > MIN_IOU with
  a ground-truth box of its image; w_a = that largest IoU; W = sum of w over the region of the
  whole batch (at least 1), divided by the number of workers;
* ``loss_distill_soft_cls``: focal KL of the K class logits over every valid anchor / W;
* ``loss_distill_soft_iou``: focal KL of the IoU logit over the region / W;
* ``loss_distill_soft_box``: GIoU loss of the student's decoded box against the teacher's,
  weighted by w, over the region / W.

Differences from the official head, on purpose: anchors on batch padding are left out of the
class term (the official sums them, which makes the loss depend on the other images of the
batch), and W is at least 1 (the official divides by W even when the region is empty).
Pure Soft-Label runs (no ground-truth loss) set MODEL.DISTILL.TASK_LOSS_WEIGHT 0.
"""

from typing import Dict

import torch
from detectron2.structures import Boxes, pairwise_iou
from fvcore.nn import giou_loss
from torch import Tensor

from ...layers import focal_binary_kl
from ...utils.dist import count_over_workers
from ..detectors.paa import check_same_anchor_layout
from ..distill.outputs import DetectorOutputs
from ..distill.registries import DISTILLER_REGISTRY
from ..distill.roles import Borrowed, Distiller

__all__ = ["SoftLabelDistiller"]


@DISTILLER_REGISTRY.register()
class SoftLabelDistiller(Distiller):
    """Keys under MODEL.DISTILL.SOFT_LABEL; teacher and student are PAA detectors with the same
    anchor layout (checked at build time)."""

    loss_names = ("loss_distill_soft_cls", "loss_distill_soft_iou", "loss_distill_soft_box")

    def __init__(self, cfg, *, student, teacher):
        super().__init__()
        c = cfg.MODEL.DISTILL.SOFT_LABEL
        self.gamma, self.min_iou = c.GAMMA, c.MIN_IOU
        self.cls_weight, self.iou_weight, self.box_weight = c.CLS_WEIGHT, c.IOU_WEIGHT, c.BOX_WEIGHT
        check_same_anchor_layout(student, teacher.detector)
        # the student's PAA parts; the teacher's outputs share its layout (checked above)
        self.student_parts = Borrowed(
            anchors=student.anchors,
            valid_mask=student.valid_mask,
            flatten_predictions=student.flatten_predictions,
            decode=student.decode,
        )

    def forward(self, student: DetectorOutputs, teacher: DetectorOutputs, assignment=None):
        model = self.student_parts
        feats = [student.features[f] for f in student.head_in_features]
        anchors, _ = model.anchors(feats)
        valid = model.valid_mask(feats, student.images.image_sizes)  # (N, R)
        s_logits, s_deltas, s_iou = model.flatten_predictions(student.predictions)
        with torch.no_grad():
            t_logits, t_deltas, t_iou = model.flatten_predictions(teacher.predictions)
            t_boxes = self._clipped(model.decode(t_deltas, anchors[None]), student)
            best = torch.zeros(valid.shape, device=anchors.device)
            for i, gt in enumerate(student.gt_instances):
                if len(gt) > 0:
                    best[i] = pairwise_iou(Boxes(t_boxes[i]), gt.gt_boxes).amax(dim=1)
            region = valid & (best > self.min_iou)
            w = best[region]
            norm = count_over_workers(w.sum())
        out: Dict[str, Tensor] = {}
        out["loss_distill_soft_cls"] = (
            self.cls_weight
            * focal_binary_kl(s_logits[valid], t_logits[valid].float().sigmoid(), self.gamma).sum()
            / norm
        )
        if bool(region.any()):
            s_boxes = self._clipped(model.decode(s_deltas, anchors[None]), student)
            out["loss_distill_soft_iou"] = (
                self.iou_weight
                * focal_binary_kl(s_iou[region], t_iou[region].float().sigmoid(), self.gamma).sum()
                / norm
            )
            giou = giou_loss(s_boxes[region], t_boxes[region], reduction="none")
            out["loss_distill_soft_box"] = self.box_weight * (giou * w).sum() / norm
        else:
            out["loss_distill_soft_iou"] = s_iou.sum() * 0.0
            out["loss_distill_soft_box"] = s_deltas.sum() * 0.0
        return out

    @staticmethod
    def _clipped(boxes: Tensor, outputs: DetectorOutputs) -> Tensor:
        """(N, R, 4) boxes clipped to each image's own size (the official decoder does)."""
        out = []
        for b, (h, w) in zip(boxes, outputs.images.image_sizes):
            x = torch.stack(
                [
                    b[:, 0].clamp(0, w),
                    b[:, 1].clamp(0, h),
                    b[:, 2].clamp(0, w),
                    b[:, 3].clamp(0, h),
                ],
                dim=1,
            )
            out.append(x)
        return torch.stack(out)
