"""A second detector trained together with the student (CoLAD's second network)."""

import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from torch import nn

from ...checkpoint import load_strict
from ..meta_arch.adapters import build_adapter, num_classes_of
from .build import TEACHER_REGISTRY
from .pretrained import build_teacher_config, channels_reversed, run_on_student_batch

__all__ = ["CoLearningTeacher"]

logger = logging.getLogger(__name__)


@TEACHER_REGISTRY.register()
class CoLearningTeacher(nn.Module):
    """A detector built from its own config (MODEL.DISTILL.TEACHER.CONFIG_FILE + OPTS) that
    trains with the student: it runs with gradient on the same batch, its own detection losses
    (suffix ``_t``) are added every iteration, on the targets an assigner stored in its outputs
    (``extras["label_anchors"]``, e.g. CoLAD's shared assignment) or else on its own. Its
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

    def __init__(self, cfg, student=None, student_shape=None):
        super().__init__()
        tcfg = build_teacher_config(cfg)
        self.detector = build_model(tcfg)
        weights = cfg.MODEL.DISTILL.TEACHER.WEIGHTS
        if weights:
            load_strict(
                self.detector,
                weights,
                what="co-learned network weights (MODEL.DISTILL.TEACHER.WEIGHTS)",
                strip_prefix="student.",
            )
            logger.info(f"Co-learned network initialised from {weights}")
        elif tcfg.MODEL.WEIGHTS:
            DetectionCheckpointer(self.detector).load(tcfg.MODEL.WEIGHTS)
            logger.info(f"Co-learned network initialised from {tcfg.MODEL.WEIGHTS}")
        self._adapter = build_adapter(self.detector)
        self.num_classes = num_classes_of(self.detector)
        self._reverse_channels = channels_reversed(cfg, tcfg)
        self.config_file = cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE

    def output_shape(self):
        return self.detector.backbone.output_shape()

    def require_predictions(self, needed: bool):
        """Its head always runs: its own losses need the predictions."""

    def detector_for_evaluation(self, student=None):
        return self.detector

    def forward(self, batched_inputs, student):
        return run_on_student_batch(
            self._adapter, self.detector, batched_inputs, student, self._reverse_channels
        )

    def losses(self, student_model, adapter, student, teacher):
        out = self._adapter.task_losses(self.detector, teacher)
        return {f"{k}_t": v for k, v in out.items()}
