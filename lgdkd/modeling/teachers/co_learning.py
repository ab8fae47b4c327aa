"""A second detector trained together with the student (CoLAD's second network)."""

import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable

from ...checkpoint import load_strict
from ..distill.registries import TEACHER_REGISTRY
from .pretrained import DetectorTeacher, build_teacher_config

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

    @configurable
    def __init__(
        self,
        *,
        detector,
        weights: str = "",
        initial_weights: str = "",
        reverse_channels: bool = False,
        config_file: str = "",
    ):
        """
        Args:
            detector: the second network.
            weights: a trained detector's checkpoint, loaded strictly ("" for none);
            initial_weights: else, weights loaded as detectron2 loads MODEL.WEIGHTS ("" for
                none: the detector keeps its initialisation).
            reverse_channels, config_file: as in :class:`DetectorTeacher`.
        """
        super().__init__(
            detector=detector, reverse_channels=reverse_channels, config_file=config_file
        )
        if weights:
            load_strict(
                self.detector,
                weights,
                what="co-learned network weights (MODEL.DISTILL.TEACHER.WEIGHTS)",
                strip_prefix="student.",
            )
            logger.info(f"Co-learned network initialised from {weights}")
        elif initial_weights:
            DetectionCheckpointer(self.detector).load(initial_weights)
            logger.info(f"Co-learned network initialised from {initial_weights}")

    @classmethod
    def from_config(cls, cfg, *, student=None):
        """The detector of MODEL.DISTILL.TEACHER.CONFIG_FILE (+ OPTS), TEACHER.WEIGHTS and the
        teacher config's own MODEL.WEIGHTS."""
        tcfg = build_teacher_config(cfg)
        return dict(
            cls._detector_args(cfg, tcfg),
            weights=cfg.MODEL.DISTILL.TEACHER.WEIGHTS,
            initial_weights=tcfg.MODEL.WEIGHTS,
        )

    def require_predictions(self, needed: bool):
        """Its head always runs: its own losses need the predictions."""

    def losses(self, student_model, adapter, student, teacher, assignment):
        if assignment is not None and assignment.targets is not None:
            teacher.targets = assignment.targets
        else:
            teacher.targets = self._adapter.targets(self.detector, teacher)
        out = self._adapter.task_losses(self.detector, teacher)
        return {f"{k}_t": v for k, v in out.items()}
