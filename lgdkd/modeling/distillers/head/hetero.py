"""HEAD (Assist + AKD + CKD; Wang et al., ECCV 2022, arXiv:2207.05345; official code
LutingWang/HEAD, branch ``refactor``) and the part it shares with TF-HEAD: the assistant, its
proposals, sampling and losses."""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...distill.outputs import DetectorOutputs
from ...distill.registries import DISTILLER_REGISTRY
from ...distill.roles import Borrowed, Distiller
from ...distill.schedule import LossSchedule
from .assistant import HEADAssistant, activation_shapes, box_head_activations, transfer_weights
from .losses import Decouple, adapter_for, akd_loss, anchor_feature_loss
from .proposals import retina_proposals

__all__ = ["HEADDistiller", "HEADBase"]


def _check_retinanet(student) -> None:
    """HEAD reads the RetinaNet cls tower, recorded from ``head.cls_subnet`` once per level as
    detectron2's own ``RetinaNetHead`` calls it (a subclass may compute its outputs
    differently)."""
    if not isinstance(student, RetinaNet) or type(getattr(student, "head", None)) is not (
        RetinaNetHead
    ):
        raise TypeError(
            "HEAD needs a RetinaNet student (MODEL.DISTILL.STUDENT_META_ARCHITECTURE "
            f"'RetinaNet' with detectron2's RetinaNetHead), got {type(student).__name__} with "
            f"{type(getattr(student, 'head', None)).__name__}."
        )


class HEADBase(Distiller):
    """Shared by HEAD and TF-HEAD: the assistant, its proposals, sampling and losses. Borrows
    the student RetinaNet's anchor generator and box transform (its proposals)."""

    needs_teacher = False
    needs_teacher_predictions = False
    # the student's cls tower per level: student.extras["cls_tower"]
    student_taps = {"cls_tower": "head.cls_subnet"}

    @configurable
    def __init__(
        self,
        *,
        assistant: HEADAssistant,
        assistant_channels: int,
        num_classes: int,
        anchor_generator,
        box2box_transform,
        tower_channels: int,
        num_anchors: int,
        proposal: Dict[str, float],
    ):
        """
        Args:
            assistant: the RoI assistant (:meth:`HEADAssistant.build`); assistant_channels: the
                width of the student levels it pools from.
            num_classes: the student's classes.
            anchor_generator, box2box_transform: the student RetinaNet's (its proposals).
            tower_channels: the width of the student's cls tower; num_anchors: its anchors per
                location.
            proposal: :func:`retina_proposals`' options (pre_nms_topk, post_nms_topk,
                nms_thresh, min_size).
        """
        super().__init__()
        self.num_classes = num_classes
        self.assistant = assistant
        self.assistant_channels = assistant_channels
        self.tower_channels = tower_channels
        self.num_anchors = num_anchors
        self.proposal_cfg = dict(proposal)
        self.student_parts = Borrowed(
            anchor_generator=anchor_generator, box2box_transform=box2box_transform
        )

    @classmethod
    def _base_args(cls, cfg, student) -> dict:
        """HEADBase's arguments: refuses a student that is not detectron2's RetinaNet and builds
        the assistant on its levels."""
        h = cfg.MODEL.DISTILL.HEAD
        if cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE != "RetinaNet":
            raise ValueError(
                f"{cls.__name__} needs MODEL.DISTILL.STUDENT_META_ARCHITECTURE "
                f"'RetinaNet', got {cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE!r}."
            )
        _check_retinanet(student)
        student_shape = student.backbone.output_shape()
        num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
        p = h.PROPOSAL
        return {
            "assistant": HEADAssistant.build(cfg, student_shape, num_classes),
            "assistant_channels": student_shape[h.ASSIST.IN_FEATURES[0]].channels,
            "num_classes": num_classes,
            "anchor_generator": student.anchor_generator,
            "box2box_transform": student.box2box_transform,
            "tower_channels": student_shape[cfg.MODEL.RETINANET.IN_FEATURES[0]].channels,
            "num_anchors": student.anchor_generator.num_cell_anchors[0],
            "proposal": {
                "pre_nms_topk": p.PRE_NMS_TOPK_PER_LEVEL,
                "post_nms_topk": p.POST_NMS_TOPK,
                "nms_thresh": p.NMS_THRESH,
                "min_size": p.MIN_SIZE,
            },
        }

    def proposals(self, student: DetectorOutputs) -> List[Instances]:
        """The assistant's proposals: :func:`retina_proposals` from the student's (detached)
        RetinaNet outputs with MODEL.DISTILL.HEAD.PROPOSAL, per image in descending score.
        ``self.assistant.sample(proposals, student.gt_instances)`` gives the RoIs it trains on
        (positives first; ``gt_classes`` = K for the negatives)."""
        model = self.student_parts
        head_in = [student.features[f] for f in student.head_in_features]
        logits, deltas = student.predictions[0], student.predictions[1]
        return retina_proposals(
            model.anchor_generator(head_in),
            logits,
            deltas,
            student.images.image_sizes,
            model.box2box_transform,
            self.num_classes,
            **self.proposal_cfg,
        )

    def _sample(self, student: DetectorOutputs) -> List[Instances]:
        return self.assistant.sample(self.proposals(student), student.gt_instances)

    @staticmethod
    def _id_rows(sampled: List[Instances]) -> Tensor:
        """(S, 5) rows (img, level, y, x, a) in the order of the sampled RoIs."""
        return torch.cat(
            [
                torch.cat([torch.full_like(p.anchor_pos[:, :1], i), p.anchor_pos], dim=1)
                for i, p in enumerate(sampled)
            ]
        )

    def _assist_losses(self, student, names, warm: float):
        sampled = self._sample(student)
        losses, acts = self.assistant.run(student.features, sampled, names)
        losses = {
            "loss_assist_cls": losses["loss_cls"] * warm,
            "loss_assist_box_reg": losses["loss_box_reg"] * warm,
        }
        return losses, sampled, acts


@DISTILLER_REGISTRY.register()
class HEADDistiller(HEADBase):
    """Assist, AKD and CKD (HEAD; "Assist only" with both weights 0 and no teacher).

    Losses: ``loss_assist_cls``, ``loss_assist_box_reg`` (the assistant's Fast R-CNN losses,
    x the ASSIST.LOSS_WARMUP_ITERS ramp); ``loss_distill_akd`` (sum over AKD.LAYERS of the MSE
    between Linear(assistant activation) and the teacher's, on every sampled RoI);
    ``loss_distill_ckd`` (MSE between the adapted student cls-tower vector at each non-GT
    RoI's anchor location and the teacher's AKD.LAYERS[-1] activation). The KD weights ramp
    as WEIGHT x min(iteration / WARMUP_ITERS, 1).
    """

    loss_names = (
        "loss_assist_cls",
        "loss_assist_box_reg",
        "loss_distill_akd",
        "loss_distill_ckd",
    )

    @configurable
    def __init__(
        self,
        *,
        layers: List[str],
        akd_weight: float = 2.0,
        akd_warmup: int = 2000,
        ckd_weight: float = 2.0,
        ckd_warmup: int = 2000,
        ckd_stop: int = -1,
        ckd_adapter: str = "linear",
        assist_warmup: int = 0,
        teacher_parts: Optional[Borrowed] = None,
        activation_dims: Optional[Dict[str, Dict[str, tuple]]] = None,
        **base,
    ):
        """
        Args:
            layers: the box-head layers AKD compares (MODEL.DISTILL.HEAD.AKD.LAYERS; CKD the
                last one).
            akd_weight ... assist_warmup: MODEL.DISTILL.HEAD's AKD.LOSS_WEIGHT, AKD.WARMUP_ITERS,
                CKD.LOSS_WEIGHT, CKD.WARMUP_ITERS, CKD.EARLY_STOP_ITER, CKD.ADAPTER and
                ASSIST.LOSS_WARMUP_ITERS.
            teacher_parts: the Faster R-CNN teacher's ``box_pooler``, ``box_head`` and
                ``box_in_features`` (None: Assist only, no teacher).
            activation_dims: {"student": {layer: shape}, "teacher": {layer: shape}}, the
                activation shapes of the assistant's and the teacher's box heads (with a
                teacher), which size the adapters.
            base: :class:`HEADBase`'s arguments.
        """
        super().__init__(**base)
        self.akd_weight, self.ckd_weight = akd_weight, ckd_weight
        self.assist_schedule = LossSchedule(warmup=assist_warmup)
        self.akd_schedule = LossSchedule(warmup=akd_warmup)
        self.ckd_schedule = LossSchedule(stop=ckd_stop, warmup=ckd_warmup)
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("MODEL.DISTILL.HEAD.AKD.LAYERS is empty.")
        if ckd_adapter not in ("linear", "decouple"):
            raise ValueError(
                f"MODEL.DISTILL.HEAD.CKD.ADAPTER = {ckd_adapter!r}; valid: linear, decouple"
            )
        self.ckd_adapter_kind = ckd_adapter
        # adapters sized by the teacher's box head
        self.akd_adapters = nn.ModuleDict()
        self.ckd_adapter = None
        if teacher_parts is None:
            return
        # AKD runs the teacher's own pooler and box head on the student's sampled RoIs
        self.teacher_parts = teacher_parts
        dims = activation_dims
        for name in self.layers:
            self.akd_adapters[name] = adapter_for(dims["student"][name], dims["teacher"][name])
        t_last = dims["teacher"][self.layers[-1]]
        if len(t_last) != 1:
            if self.ckd_weight > 0:
                raise ValueError(
                    f"CKD regresses a vector onto the teacher's {self.layers[-1]!r} output, "
                    f"which is a map {t_last}: make MODEL.DISTILL.HEAD.AKD.LAYERS end with an "
                    "fc layer, or set CKD.LOSS_WEIGHT 0."
                )
        elif self.ckd_adapter_kind == "linear":
            self.ckd_adapter = nn.Linear(self.tower_channels, t_last[0])
        else:
            self.ckd_adapter = Decouple(self.tower_channels, t_last[0], self.num_anchors)

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """Refuses AKD / CKD or INIT_FROM_TEACHER without a teacher and a teacher that is not a
        Faster R-CNN; copies the teacher's box head into the assistant (INIT_FROM_TEACHER) and
        measures both box heads' activation shapes with one dry run on a zero RoI feature."""
        h = cfg.MODEL.DISTILL.HEAD
        uses_teacher = h.AKD.LOSS_WEIGHT > 0 or h.CKD.LOSS_WEIGHT > 0
        if (uses_teacher or h.ASSIST.INIT_FROM_TEACHER) and teacher is None:
            raise ValueError(
                "HEADDistiller: AKD/CKD (MODEL.DISTILL.HEAD.AKD.LOSS_WEIGHT / CKD.LOSS_WEIGHT "
                "> 0) and ASSIST.INIT_FROM_TEACHER need a Faster R-CNN teacher "
                "(MODEL.DISTILL.TEACHER.NAME 'PretrainedTeacher'); for 'Assist only' set both "
                "weights to 0 and INIT_FROM_TEACHER False."
            )
        args = cls._base_args(cfg, student)
        args.update(
            layers=list(h.AKD.LAYERS),
            akd_weight=h.AKD.LOSS_WEIGHT,
            akd_warmup=h.AKD.WARMUP_ITERS,
            ckd_weight=h.CKD.LOSS_WEIGHT,
            ckd_warmup=h.CKD.WARMUP_ITERS,
            ckd_stop=h.CKD.EARLY_STOP_ITER,
            ckd_adapter=h.CKD.ADAPTER,
            assist_warmup=h.ASSIST.LOSS_WARMUP_ITERS,
        )
        if teacher is None or not args["layers"]:
            return args
        detector = teacher.detector
        roi_heads = getattr(detector, "roi_heads", None)
        if not isinstance(getattr(roi_heads, "box_head", None), FastRCNNConvFCHead):
            raise TypeError(
                "HEAD's teacher must be a Faster R-CNN (GeneralizedRCNN with StandardROIHeads "
                f"and a FastRCNNConvFCHead box head), got {type(detector).__name__}; check "
                "MODEL.DISTILL.TEACHER.CONFIG_FILE."
            )
        assistant = args["assistant"]
        if h.ASSIST.INIT_FROM_TEACHER:
            transfer_weights(assistant, roi_heads)
        t_shape = teacher.output_shape()[roi_heads.box_in_features[0]]
        args["activation_dims"] = {
            "student": activation_shapes(
                assistant.box_head,
                (args["assistant_channels"], *assistant.box_pooler.output_size),
                args["layers"],
            ),
            "teacher": activation_shapes(
                roi_heads.box_head,
                (t_shape.channels, *roi_heads.box_pooler.output_size),
                args["layers"],
            ),
        }
        args["teacher_parts"] = Borrowed(
            box_pooler=roi_heads.box_pooler,
            box_head=roi_heads.box_head,
            box_in_features=list(roi_heads.box_in_features),
        )
        return args

    def forward(self, student: DetectorOutputs, teacher: Optional[DetectorOutputs], assignment):
        it = get_event_storage().iter
        warm = self.assist_schedule.weight(it)
        w_akd = float(self.akd_weight) * self.akd_schedule.weight(it)
        w_ckd = float(self.ckd_weight) * self.ckd_schedule.weight(it)
        names = self.layers if (w_akd > 0 or w_ckd > 0) else []
        losses, sampled, acts = self._assist_losses(student, names, warm)
        zero = student.features[student.head_in_features[0]].sum() * 0.0
        losses["loss_distill_akd"] = zero
        losses["loss_distill_ckd"] = zero
        if not names:
            return losses
        if teacher is None:
            raise ValueError("HEADDistiller: AKD/CKD need the teacher's features.")
        t_acts = self.teacher_activations(teacher, sampled)
        if w_akd > 0:
            akd = akd_loss(self.akd_adapters, acts, t_acts)
            losses["loss_distill_akd"] = w_akd * akd
        if w_ckd > 0 and self.ckd_adapter is not None:
            ckd = anchor_feature_loss(
                self.ckd_adapter,
                student.extras["cls_tower"],
                self._id_rows(sampled),
                t_acts[self.layers[-1]],
            )
            losses["loss_distill_ckd"] = w_ckd * ckd
        return losses

    @torch.no_grad()
    def teacher_activations(
        self, teacher: DetectorOutputs, sampled: List[Instances]
    ) -> Dict[str, Tensor]:
        """The frozen teacher's RoI box head on exactly the student's sampled RoIs (its own
        pooler on its own FPN levels)."""
        roi_heads = self.teacher_parts
        x = roi_heads.box_pooler(
            [teacher.features[f] for f in roi_heads.box_in_features],
            [p.proposal_boxes for p in sampled],
        )
        _, acts = box_head_activations(roi_heads.box_head, x, self.layers)
        return {k: v.detach() for k, v in acts.items()}
