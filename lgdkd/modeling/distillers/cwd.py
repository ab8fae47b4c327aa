"""Channel-wise distillation (CWD): each channel of a feature map, softmax-normalised over the
spatial positions, is matched to the teacher's by KL divergence.

Shu, Liu, Gao, Yan, Shen: "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021
(arXiv 2011.13256); official detection code: pppppM/mmdetection-distiller
(``mmdet/distillation/losses/cwd.py``, ``configs/distillers/cwd``), where RetinaNet R-50 2x
goes from 37.4 to 40.5 AP on COCO with a RetinaNet X-101-64x4d 2x teacher (40.8 AP), CWD on the
FPN outputs P3-P6 at temperature 1 and weight 5 per level.

This file is the whole method: the distiller, its config node ``MODEL.DISTILL.CWD`` and its
checks. It edits nothing else (lgdkd.modeling imports every module of this package).

Shape shorthand: N images, C channels, H x W one level.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...config import distill_config
from ...utils.dist import count_over_workers
from ..assigners.regions import valid_region_masks
from ..distill.outputs import DetectorOutputs
from ..distill.registries import DISTILLER_REGISTRY
from ..distill.roles import Distiller
from .feature_mimic import paired_features

__all__ = ["ChannelWiseDistiller", "channel_wise_kl"]


@distill_config("CWD")
def _defaults(node):
    # Student feature maps compared (detectron2 names); the official RetinaNet config takes
    # the FPN outputs P3-P6 (mmdet's fpn_convs 0-3).
    node.IN_FEATURES = ["p3", "p4", "p5", "p6"]
    # Teacher feature map for each student feature (same order); [] = the same names.
    node.TEACHER_FEATURES = []
    # Temperature of the spatial softmax; the loss is multiplied by TAU ** 2.
    node.TAU = 1.0
    # Weight of each level's loss; the levels' losses are summed, as in the official config
    # (one loss of weight 5 per FPN level).
    node.LOSS_WEIGHT = 5.0


def channel_wise_kl(student, teacher, mask, tau: float):
    """Sum over images and channels of ``KL(softmax(t / tau) || softmax(s / tau)) * tau**2``,
    each softmax over the H x W positions where ``mask`` is 1 (the image, not its padding).

    Args:
        student, teacher: (N, C, H, W) maps (the teacher's without gradient).
        mask: (N, 1, H, W), 1 inside the image; an image with no cell on this level adds 0.

    Returns:
        (the sum, the number of images that took part)
    """
    n, c = student.shape[:2]
    keep = mask.flatten(1).bool()  # (N, H*W)
    present = keep.any(dim=1)  # (N,)
    keep = keep | ~present[:, None]  # an image without cells: computed on all, then dropped
    keep = keep[:, None, :].expand(n, c, keep.shape[-1])
    s = (student.float() / tau).flatten(2).masked_fill(~keep, float("-inf"))
    t = (teacher.float() / tau).flatten(2).masked_fill(~keep, float("-inf"))
    log_p_s, log_p_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    # off the image both are -inf: the difference is taken only where the cell counts
    diff = torch.where(keep, log_p_t - log_p_s, torch.zeros_like(log_p_s))
    kl = (log_p_t.exp() * diff).sum(dim=-1)  # (N, C)
    kl = kl * present[:, None].to(kl.dtype)
    return kl.sum() * tau**2, present.sum()


@DISTILLER_REGISTRY.register()
class ChannelWiseDistiller(Distiller):
    """CWD on the feature maps of ``MODEL.DISTILL.CWD.IN_FEATURES``.

    Loss of level l (student map s through a 1x1 conv when the channel counts differ, as in the
    official code; teacher map t), over the images of all workers::

        L_l = tau^2 / (N C) * sum_{n, c} KL(softmax(t_{n,c} / tau) || softmax(s_{n,c} / tau))

    each softmax over the cells of the image (the padding that batching adds is left out, so
    the loss of an image does not depend on the other images of its batch; the official code
    takes the padded map, which is the same for a batch of equal-size images). Returned:
    ``loss_distill_cwd = LOSS_WEIGHT * sum_l L_l``. The official code logs the cross-entropy
    ``-sum p_t log p_s``, which is this KL plus the teacher's entropy: same gradient, and 0
    here when the maps agree. With a 1x1 alignment the official code divides by the student's
    channel count while summing over the teacher's; here C is the compared maps' (the
    teacher's) channel count, the paper's mean over channels (the two agree for equal widths,
    as in every official config).
    """

    needs_teacher_predictions = False
    loss_names = ("loss_distill_cwd",)

    @configurable
    def __init__(
        self,
        *,
        pairs: List[Tuple[str, str]],
        student_shapes: Dict[str, ShapeSpec],
        teacher_shapes: Dict[str, ShapeSpec],
        tau: float = 1.0,
        loss_weight: float = 5.0,
    ):
        """
        Args:
            pairs: (student feature, teacher feature) per level compared.
            student_shapes, teacher_shapes: the two sides' feature shapes (channels, stride).
            tau: temperature of the spatial softmax. loss_weight: weight of each level.
        """
        super().__init__()
        self.pairs = list(pairs)
        self.strides = {s: student_shapes[s].stride for s, _ in self.pairs}
        self.align = nn.ModuleDict()
        for s, t in self.pairs:
            c_s, c_t = student_shapes[s].channels, teacher_shapes[t].channels
            if c_s != c_t:
                conv = nn.Conv2d(c_s, c_t, kernel_size=1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
                self.align[s] = conv
        self.tau = float(tau)
        self.loss_weight = float(loss_weight)

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """The feature shapes of both models; refuses levels either side lacks or whose strides
        differ (:func:`paired_features`), and a temperature <= 0."""
        c = cfg.MODEL.DISTILL.CWD
        s_shape, t_shape = student.backbone.output_shape(), teacher.output_shape()
        pairs = paired_features(
            s_shape, t_shape, list(c.IN_FEATURES), list(c.TEACHER_FEATURES), "CWD"
        )
        if not c.TAU > 0:
            raise ValueError(f"MODEL.DISTILL.CWD.TAU must be > 0, got {c.TAU}.")
        return {
            "pairs": pairs,
            "student_shapes": dict(s_shape),
            "teacher_shapes": dict(t_shape),
            "tau": c.TAU,
            "loss_weight": c.LOSS_WEIGHT,
        }

    def forward(self, student: DetectorOutputs, teacher: DetectorOutputs, assignment=None):
        feats = {s: student.features[s] for s, _ in self.pairs}
        masks = valid_region_masks(student.images.image_sizes, feats, self.strides)
        total = 0.0
        for s, t in self.pairs:
            pred = self.align[s](feats[s]) if s in self.align else feats[s]
            target = teacher.features[t].detach()
            if pred.shape != target.shape:
                raise ValueError(
                    f"ChannelWiseDistiller: student {s!r} {tuple(pred.shape)} vs teacher {t!r} "
                    f"{tuple(target.shape)} (after the 1x1 alignment)."
                )
            kl, images = channel_wise_kl(pred, target, masks[s], self.tau)
            total = total + kl / count_over_workers((images * pred.shape[1]).float())
        return {"loss_distill_cwd": self.loss_weight * total}
