"""Teachers that are detectors built from their own config: the frozen, pretrained one and the
shared part of the co-learned one (:mod:`.co_learning`)."""

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from ...checkpoint import load_strict
from ...config import check_config, get_cfg
from ...data import apply_num_classes, register_datasets_from_cfg
from ..distill.adapters import build_adapter, num_classes_of
from ..distill.registries import TEACHER_REGISTRY
from ..distill.roles import Teacher

__all__ = [
    "DetectorTeacher",
    "PretrainedTeacher",
    "build_teacher_config",
    "channels_reversed",
    "run_on_student_batch",
]

logger = logging.getLogger(__name__)


def build_teacher_config(cfg):
    """The teacher's own config: MODEL.DISTILL.TEACHER.CONFIG_FILE + TEACHER.OPTS.

    The teacher runs on the student's device. A teacher config that is itself a distillation
    config (a teacher-assistant chain) describes its student: that student is the teacher.
    Class counts follow the teacher's own training data, as they did when it was trained.
    """
    t = cfg.MODEL.DISTILL.TEACHER
    if not t.CONFIG_FILE:
        raise ValueError(
            f"MODEL.DISTILL.TEACHER.NAME is {t.NAME!r} but MODEL.DISTILL.TEACHER.CONFIG_FILE is "
            "empty: give the config file the teacher was trained with."
        )
    tcfg = get_cfg()
    tcfg.merge_from_file(t.CONFIG_FILE)
    tcfg.merge_from_list(list(t.OPTS))
    check_config(tcfg, f"teacher config {t.CONFIG_FILE}")
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    if tcfg.MODEL.META_ARCHITECTURE == "DistillationDetector":
        tcfg.MODEL.META_ARCHITECTURE = tcfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    tcfg.MODEL.DISTILL.TEACHER.NAME = ""
    tcfg.MODEL.DISTILL.DISTILLERS = []
    register_datasets_from_cfg(tcfg, check=False)
    apply_num_classes(tcfg)
    tcfg.freeze()
    return tcfg


class DetectorTeacher(Teacher):
    """A detector built from MODEL.DISTILL.TEACHER.CONFIG_FILE + OPTS (:func:`build_teacher_config`)
    that runs on the student's batch with its own preprocessing (channels reversed when the
    input formats differ, padded to the student's size).

    Attributes:
        detector: the teacher detector (a stock detectron2/lgdkd model).
    """

    @configurable
    def __init__(self, *, detector, reverse_channels: bool = False, config_file: str = ""):
        """
        Args:
            detector: the teacher detector.
            reverse_channels: whether it needs the student's images with the channels
                reversed (RGB <-> BGR, :func:`channels_reversed`).
            config_file: the config it was built from, named in errors.
        """
        super().__init__()
        self.detector = detector
        self._adapter = build_adapter(self.detector)
        self.num_classes = num_classes_of(self.detector)
        self._reverse_channels = reverse_channels
        self._with_head = True
        self.config_file = config_file

    @classmethod
    def from_config(cls, cfg, *, student=None):
        return cls._detector_args(cfg, build_teacher_config(cfg))

    @staticmethod
    def _detector_args(cfg, tcfg) -> dict:
        """The detector of the teacher config ``tcfg`` and how it reads the student's images."""
        return {
            "detector": build_model(tcfg),
            "reverse_channels": channels_reversed(cfg, tcfg),
            "config_file": cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE,
        }

    def output_shape(self):
        return self.detector.backbone.output_shape()

    def detector_for_evaluation(self, student=None):
        return self.detector

    def forward(self, batched_inputs, student):
        return run_on_student_batch(
            self._adapter,
            self.detector,
            batched_inputs,
            student,
            self._reverse_channels,
            with_head=self._with_head,
        )


@TEACHER_REGISTRY.register()
class PretrainedTeacher(DetectorTeacher):
    """A detector built from its own config and weights; frozen: eval mode, no gradient, out
    of the optimizer (``requires_grad`` False), out of the run's checkpoints (reloaded from
    ``weights_file``, fingerprinted) and out of the exported student."""

    @configurable
    def __init__(
        self,
        *,
        detector,
        weights: Optional[str] = None,
        reverse_channels: bool = False,
        config_file: str = "",
    ):
        """
        Args:
            detector: the teacher detector; weights: its checkpoint, loaded strictly (None: the
                detector's weights are used as they are).
            reverse_channels, config_file: as in :class:`DetectorTeacher`.
        """
        super().__init__(
            detector=detector, reverse_channels=reverse_channels, config_file=config_file
        )
        if weights is not None:
            load_strict(
                self.detector,
                weights,
                what="teacher weights (MODEL.DISTILL.TEACHER.WEIGHTS)",
                strip_prefix="student.",
            )
            logger.info(f"Teacher {type(self.detector).__name__} loaded from {weights}")
        self.weights_file = weights or ""
        self.detector.requires_grad_(False)
        self.detector.eval()

    @classmethod
    def from_config(cls, cfg, *, student=None):
        """The detector of MODEL.DISTILL.TEACHER.CONFIG_FILE (+ OPTS) and its WEIGHTS."""
        args = cls._detector_args(cfg, build_teacher_config(cfg))
        return dict(args, weights=cfg.MODEL.DISTILL.TEACHER.WEIGHTS)

    def train(self, mode: bool = True):
        """Stays in eval mode whatever the caller asks (BN statistics, dropout, proposals)."""
        return super().train(False)

    def require_predictions(self, needed: bool):
        """Whether the teacher must run its detection head (False: backbone + FPN only)."""
        self._with_head = bool(needed)

    @torch.no_grad()
    def forward(self, batched_inputs, student):
        return super().forward(batched_inputs, student)


def channels_reversed(cfg, tcfg) -> bool:
    """Whether the teacher (config ``tcfg``) needs the student's images (decoded in the
    student's INPUT.FORMAT) with the channels reversed; other format pairs are refused."""
    s_fmt, t_fmt = cfg.INPUT.FORMAT, tcfg.INPUT.FORMAT
    if s_fmt != t_fmt and {s_fmt, t_fmt} != {"RGB", "BGR"}:
        raise ValueError(
            f"The teacher expects INPUT.FORMAT {t_fmt!r} but the student's images are "
            f"{s_fmt!r}; only RGB <-> BGR can be converted on the fly."
        )
    return s_fmt != t_fmt


def _pad_like(images: ImageList, like: ImageList, divisibility: int) -> ImageList:
    """``images`` zero-padded (bottom/right, as ImageList pads) to the padded size of ``like``
    when that is larger and a multiple of the teacher's ``divisibility``: a teacher whose
    backbone pads less than the student's (e.g. to 32 against a student padding to 64) sees the
    student's padded tensor, and its feature maps stay aligned with the image."""
    h, w = images.tensor.shape[-2:]
    th, tw = like.tensor.shape[-2:]
    d = max(int(divisibility), 1)
    if (h, w) == (th, tw) or th < h or tw < w or th % d or tw % d:
        return images
    return ImageList(F.pad(images.tensor, (0, tw - w, 0, th - h)), images.image_sizes)


def run_on_student_batch(adapter, detector, batched_inputs, student, reverse, with_head=True):
    """``detector`` on the student's batch (its own preprocessing, channels reversed if
    ``reverse``); refuses a padded size other than the student's."""
    if reverse:
        batched_inputs = [dict(x, image=x["image"].flip(0)) for x in batched_inputs]
    images, gt = adapter.preprocess(detector, batched_inputs)
    if student is not None:
        images = _pad_like(images, student.images, detector.backbone.size_divisibility)
    if student is not None and images.tensor.shape[-2:] != student.images.tensor.shape[-2:]:
        raise ValueError(
            f"Teacher input {tuple(images.tensor.shape[-2:])} and student input "
            f"{tuple(student.images.tensor.shape[-2:])} differ after padding: the teacher's "
            "backbone size_divisibility differs from the student's, so their feature maps "
            "cannot be aligned."
        )
    return adapter.run(detector, images, gt, with_head=with_head)
