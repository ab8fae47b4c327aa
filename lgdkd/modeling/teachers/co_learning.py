"""A second detector trained together with the student (CoLAD's second network)."""

import logging

from detectron2.checkpoint import DetectionCheckpointer

from ...checkpoint import load_strict
from ..distill.registries import TEACHER_REGISTRY
from .pretrained import DetectorTeacher

__all__ = ["CoLearningTeacher"]

logger = logging.getLogger(__name__)


@TEACHER_REGISTRY.register()
class CoLearningTeacher(DetectorTeacher):
    """A detector built from its own config (MODEL.DISTILL.TEACHER.CONFIG_FILE + OPTS) that
    trains with the student: it runs with gradient on the same batch, its own detection losses
    (suffix ``_t``) are added every iteration, on the assigner's targets when it gives some
    (``Assignment.targets``, e.g. CoLAD's shared assignment) or else on its own. Its
    parameters form their own param groups (lr x MODEL.DISTILL.TEACHER.LR_FACTOR); it is saved
    and resumed with the student (``teacher.detector.*``), evaluated with
    MODEL.DISTILL.TEACHER.EVAL or as the main network with MODEL.DISTILL.EVAL_NETWORK
    "teacher", and exported with ``tools/export_student.py --network teacher``.

    Initial weights: MODEL.DISTILL.TEACHER.WEIGHTS (a trained detector, loaded strictly) if
    set, else the teacher config's MODEL.WEIGHTS (e.g. ImageNet backbone weights, loaded as
    detectron2 loads initial weights) if set, else its own initialisation (timm backbones
    load TIMM.PRETRAINED when built).
    """

    trainable = True

    def __init__(self, cfg, *, student=None):
        super().__init__(cfg, student=student)
        weights = cfg.MODEL.DISTILL.TEACHER.WEIGHTS
        if weights:
            load_strict(
                self.detector,
                weights,
                what="co-learned network weights (MODEL.DISTILL.TEACHER.WEIGHTS)",
                strip_prefix="student.",
            )
            logger.info(f"Co-learned network initialised from {weights}")
        elif self.teacher_cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(self.detector).load(self.teacher_cfg.MODEL.WEIGHTS)
            logger.info(f"Co-learned network initialised from {self.teacher_cfg.MODEL.WEIGHTS}")

    def require_predictions(self, needed: bool):
        """Its head always runs: its own losses need the predictions."""

    def losses(self, student_model, adapter, student, teacher, assignment):
        if assignment is not None and assignment.targets is not None:
            teacher.targets = assignment.targets
        else:
            teacher.targets = self._adapter.targets(self.detector, teacher)
        out = self._adapter.task_losses(self.detector, teacher)
        return {f"{k}_t": v for k, v in out.items()}
