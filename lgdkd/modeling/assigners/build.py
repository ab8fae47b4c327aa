"""Assigner registry.

An assigner decides, each iteration, where distillation happens and, for label-assignment
distillation, which targets the student trains on. It is called as::

    assigner(student: DetectorOutputs, teacher: Optional[DetectorOutputs]) -> Assignment

with the ground truth in ``student.gt_instances``. It runs without gradient unless it says so.
Class attribute ``needs_teacher_predictions`` (default True) says whether it reads the
teacher's head outputs; when no component does, the teacher stops after its backbone.
"""

from detectron2.utils.registry import Registry

from ..registry_utils import get_from_registry

__all__ = ["ASSIGNER_REGISTRY", "build_assigner"]

ASSIGNER_REGISTRY = Registry("ASSIGNER")
ASSIGNER_REGISTRY.__doc__ = __doc__


def build_assigner(cfg):
    """Build ``MODEL.DISTILL.ASSIGNER.NAME`` (None when the name is "")."""
    name = cfg.MODEL.DISTILL.ASSIGNER.NAME
    if not name:
        return None
    return get_from_registry(ASSIGNER_REGISTRY, name, "MODEL.DISTILL.ASSIGNER.NAME")(cfg)
