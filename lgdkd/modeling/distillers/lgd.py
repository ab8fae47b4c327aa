"""LGD's distillation loss: adapted student FPN maps pulled to the (detached) teacher maps.

Zhang et al., AAAI 2022 (arXiv 2109.11496), official code megvii-research/LGD
(``SequentialConvs`` adapter and ``BaseDistillator.distill``).

Shape shorthand: N images, C FPN channels, H_l x W_l level l.
"""

from typing import Dict, List

from detectron2.config import configurable
from torch import nn

from ...utils.dist import count_over_workers
from ..assigners.regions import valid_region_masks
from ..distill.outputs import DetectorOutputs
from ..distill.registries import DISTILLER_REGISTRY
from ..distill.roles import Distiller
from .feature_mimic import instance_norm

__all__ = ["LGDDistiller"]


@DISTILLER_REGISTRY.register()
class LGDDistiller(Distiller):
    """``LOSS_WEIGHT * MSE(IN(adapter(F_l)), IN(sg(T_l)))`` over the levels both sides have.

    * adapter: conv3x3-ReLU-conv3x3-ReLU-conv3x3 (C -> C), one module shared by every level,
      optimised with the student;
    * IN: instance norm without affine parameters (per image and channel over H_l x W_l,
      padding included), on both sides;
    * reduction (MODEL.DISTILL.LGD.LOSS_REGION): "all" (official) averages the squared error
      over every element of every level, padding included, so large levels weigh most;
      "valid" averages over the cells inside the images only (counts averaged over workers).
      Both are means: the loss does not grow with images per worker.

    ``trains_when_off``: while the schedule has distillation off (LGD's first
    MODEL.DISTILL.SCHEDULE.START_ITER iterations) the loss is still computed at full weight on
    detached student features, so only the adapter learns, as in the official code.
    """

    needs_teacher = True
    needs_teacher_predictions = False
    trains_when_off = True
    loss_names = ("loss_distill_lgd",)

    @configurable
    def __init__(
        self,
        *,
        levels: List[str],
        strides: Dict[str, int],
        channels: int,
        loss_region: str = "all",
        loss_weight: float = 1.0,
    ):
        """
        Args:
            levels: the feature levels compared; strides: their strides; channels: the one
                width of every level on both sides (the adapter is shared over the levels).
            loss_region: "all" or "valid"; loss_weight: the loss's weight.
        """
        super().__init__()
        if loss_region not in ("all", "valid"):
            raise ValueError(f"MODEL.DISTILL.LGD.LOSS_REGION = {loss_region!r}; valid: all, valid")
        C = channels
        self.levels = list(levels)
        self.strides = dict(strides)
        self.adapter = nn.Sequential(
            nn.Conv2d(C, C, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(C, C, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(C, C, 3, padding=1),
        )
        self.region = loss_region
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """The levels both models have; refuses levels of different widths or strides."""
        student_shape, teacher_shape = student.backbone.output_shape(), teacher.output_shape()
        c = cfg.MODEL.DISTILL.LGD
        levels = sorted(k for k in student_shape if k in teacher_shape)
        if not levels:
            raise ValueError(
                f"LGDDistiller: the student ({sorted(student_shape)}) and the teacher "
                f"({sorted(teacher_shape)}) share no feature level."
            )
        widths = {student_shape[k].channels for k in levels} | {
            teacher_shape[k].channels for k in levels
        }
        if len(widths) != 1:
            raise ValueError(
                "LGDDistiller shares one adapter over all levels and needs one width, got "
                f"student {[student_shape[k].channels for k in levels]} and teacher "
                f"{[teacher_shape[k].channels for k in levels]} for levels {levels}."
            )
        for k in levels:
            if student_shape[k].stride != teacher_shape[k].stride:
                raise ValueError(
                    f"LGDDistiller: level {k!r} has stride {student_shape[k].stride} in the "
                    f"student but {teacher_shape[k].stride} in the teacher."
                )
        return {
            "levels": levels,
            "strides": {k: student_shape[k].stride for k in levels},
            "channels": widths.pop(),
            "loss_region": c.LOSS_REGION,
            "loss_weight": c.LOSS_WEIGHT,
        }

    def forward(self, student: DetectorOutputs, teacher: DetectorOutputs, assignment=None):
        if self.region == "valid":
            feats = {k: student.features[k] for k in self.levels}
            masks = valid_region_masks(student.images.image_sizes, feats, self.strides)
        sq, count = 0.0, 0.0
        for k in self.levels:
            s = student.features[k]
            t = teacher.features[k].detach()
            if s.shape != t.shape:
                raise ValueError(
                    f"LGDDistiller: student {k!r} {tuple(s.shape)} vs teacher {tuple(t.shape)}"
                )
            err = (instance_norm(self.adapter(s)) - instance_norm(t)) ** 2
            if self.region == "valid":
                m = masks[k].to(err.dtype)
                sq = sq + (err * m).sum()
                count = count + m.sum() * err.shape[1]
            else:
                sq = sq + err.sum()
                count = count + err.numel()
        if self.region == "valid":
            count = count_over_workers(count)
        return {"loss_distill_lgd": self.loss_weight * sq / count}
