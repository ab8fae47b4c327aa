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
from detectron2.config import configurable
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

    @configurable
    def __init__(
        self,
        *,
        anchors,
        valid_mask,
        flatten_predictions,
        decode,
        gamma: float = 0.5,
        min_iou: float = 0.1,
        cls_weight: float = 10.0,
        iou_weight: float = 10.0,
        box_weight: float = 1.3,
    ):
        """
        Args:
            anchors, valid_mask, flatten_predictions, decode: the student's PAA methods of the
                same names (the teacher's outputs share its layout).
            The rest: MODEL.DISTILL.SOFT_LABEL's keys of the same names (lower case).
        """
        super().__init__()
        self.gamma, self.min_iou = gamma, min_iou
        self.cls_weight, self.iou_weight, self.box_weight = cls_weight, iou_weight, box_weight
        self.student_parts = Borrowed(
            anchors=anchors,
            valid_mask=valid_mask,
            flatten_predictions=flatten_predictions,
            decode=decode,
        )

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """The student's PAA parts; refuses a teacher with another anchor layout."""
        check_same_anchor_layout(student, teacher.detector)
        c = cfg.MODEL.DISTILL.SOFT_LABEL
        return {
            "anchors": student.anchors,
            "valid_mask": student.valid_mask,
            "flatten_predictions": student.flatten_predictions,
            "decode": student.decode,
            "gamma": c.GAMMA,
            "min_iou": c.MIN_IOU,
            "cls_weight": c.CLS_WEIGHT,
            "iou_weight": c.IOU_WEIGHT,
            "box_weight": c.BOX_WEIGHT,
        }

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
