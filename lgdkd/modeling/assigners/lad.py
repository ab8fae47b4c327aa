"""LAD: label assignment distillation (Nguyen et al., WACV 2022, arXiv:2108.10520;
cybercore-co-ltd/CoLAD).

The frozen teacher (a PAA detector built from its own config, in eval mode, run without
gradient on the student's input tensor) computes the PAA assignment from its own predictions
and with its own PAA settings; the student trains on those targets instead of its own. The
student keeps its loss (set MODEL.PAA.BOX_LOSS_IOU_WEIGHTED False for LAD's student loss:
GIoU / positives). Teacher and student must share the anchor layout (levels, strides, anchor
scale, box coder, classes, padding), since targets are exchanged per anchor index: checked at
build time. The teacher may be smaller than the student.
"""

import torch
from detectron2.config import configurable

from ..detectors.paa import check_same_anchor_layout
from ..distill.outputs import Assignment, DetectorOutputs
from ..distill.registries import ASSIGNER_REGISTRY
from ..distill.roles import Assigner, Borrowed

__all__ = ["LADAssigner", "positive_region_masks"]


def positive_region_masks(positive: torch.Tensor, outputs: DetectorOutputs, num_per_level):
    """Level name -> (N, 1, H, W) float mask of the positives of (N, R) ``positive``."""
    n = positive.shape[0]
    masks = {}
    for f, m in zip(outputs.head_in_features, positive.split(list(num_per_level), dim=1)):
        h, w = outputs.features[f].shape[-2:]
        masks[f] = m.reshape(n, 1, h, w).float()
    return masks


@ASSIGNER_REGISTRY.register()
class LADAssigner(Assigner):
    """The teacher's PAA assignment as the student's targets.

    ``Assignment.targets``: the teacher's
    :class:`~lgdkd.modeling.matching.targets.DenseTargets`, which the student's loss uses
    instead of its own assignment; ``region_masks``: the teacher's positives per level (for
    distillers that want them)."""

    @configurable
    def __init__(self, *, label_anchors):
        """label_anchors: the teacher PAA's ``label_anchors`` (its assignment)."""
        super().__init__()
        self.teacher_parts = Borrowed(label_anchors=label_anchors)

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """The teacher's PAA assignment; refuses a missing teacher or one whose anchor layout
        differs from the student's."""
        if teacher is None or teacher.detector is None:
            raise ValueError(
                "MODEL.DISTILL.ASSIGNER.NAME 'LADAssigner' needs a teacher: set "
                "MODEL.DISTILL.TEACHER.NAME 'PretrainedTeacher' with the CONFIG_FILE and "
                "WEIGHTS of a trained PAA detector."
            )
        check_same_anchor_layout(student, teacher.detector)
        return {"label_anchors": teacher.detector.label_anchors}

    @torch.no_grad()
    def forward(self, student: DetectorOutputs, teacher: DetectorOutputs) -> Assignment:
        if teacher is None or teacher.predictions is None:
            raise RuntimeError("LADAssigner needs the teacher's head predictions.")
        feats = [teacher.features[f] for f in teacher.head_in_features]
        targets = self.teacher_parts.label_anchors(feats, student.gt_instances, teacher.predictions)
        return Assignment(
            region_masks=positive_region_masks(targets.positive, student, targets.num_per_level),
            targets=targets,
        )
