"""TF-HEAD (teacher-free HEAD; the official ``dev`` branch of LutingWang/HEAD): the assistants
train with the student and its head features are regressed onto their detached ones."""

from typing import Dict, List, Tuple

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...detectors.fcos import FCOS, FCOSHead
from ...distill.outputs import DetectorOutputs
from ...distill.registries import DISTILLER_REGISTRY
from ...distill.schedule import LossSchedule
from .assistant import activation_shapes
from .hetero import HEADBase
from .losses import Decouple, anchor_feature_loss

__all__ = ["TFHEADDistiller"]


class _ShapeOnlyBackbone(Backbone):
    """No layers: only the student's output shapes, so that detectron2's FCOS (which reads
    strides from its backbone) can compute its losses on the student's FPN maps."""

    def __init__(self, shapes: Dict[str, ShapeSpec]):
        super().__init__()
        self._shapes = dict(shapes)

    def output_shape(self):
        return self._shapes

    def forward(self, x):
        raise RuntimeError("The FCOS assistant runs on the student's features only.")


def _fcos_head_with_towers(head: FCOSHead, features: List[Tensor]):
    """``FCOSHead.forward`` (the same code path, per-level scales included) that also returns
    the cls-tower output per level: ``([logits, deltas, centerness], towers)``."""
    logits, deltas, ctr, towers = head.forward_with_towers(features)
    return [logits, deltas, ctr], towers


@DISTILLER_REGISTRY.register()
class TFHEADDistiller(HEADBase):
    """TF-HEAD (teacher-free; the official ``dev`` branch): the RoI assistant (random init)
    and, with TF.FCOS_ASSIST, an FCOS assistant head on the student's head levels, both
    trained with the student (their losses reach its FPN and backbone, x a linear warm-up);
    the student's RetinaNet cls tower regressed onto their *detached* features.

    Losses: ``loss_assist_cls``, ``loss_assist_box_reg`` and ``loss_assist_fcos_{cls,loc,ctr}``
    (x TF.FCOS_LOSS_WEIGHTS) x min(iteration / TF.ASSIST_LOSS_WARMUP_ITERS, 1);
    ``loss_distill_self_fcos`` = sum over levels of mean((conv1x1(S_l) - sg(F_l))^2) (one conv
    shared by all levels; S_l / F_l the RetinaNet / FCOS cls-tower outputs) x
    TF.SELF_FCOS_WEIGHT; ``loss_distill_self_rcnn`` = MSE between the adapted cls-tower vector
    at each non-GT RoI's anchor and sg(the assistant's AKD.LAYERS[-1] activation) x
    TF.SELF_RCNN_WEIGHT; both x min(iteration / TF.WARMUP_ITERS, 1), 0 from TF.EARLY_STOP_ITER.
    """

    loss_names = (
        "loss_assist_cls",
        "loss_assist_box_reg",
        "loss_assist_fcos_cls",
        "loss_assist_fcos_loc",
        "loss_assist_fcos_ctr",
        "loss_distill_self_fcos",
        "loss_distill_self_rcnn",
    )

    @configurable
    def __init__(
        self,
        *,
        layer: str,
        layer_shape: tuple,
        head_in_shapes: Dict[str, ShapeSpec],
        pixel_mean: List[float],
        pixel_std: List[float],
        fcos_assist: bool = True,
        fcos_num_convs: int = 4,
        fcos_loss_weights: Tuple[float, float, float] = (0.5, 0.5, 0.5),
        assist_warmup: int = 2000,
        self_fcos_weight: float = 1.0,
        self_rcnn_weight: float = 1.3,
        self_rcnn_adapter: str = "decouple",
        warmup: int = 2000,
        early_stop: int = 58640,
        **base,
    ):
        """
        Args:
            layer: the assistant's box-head layer the cls tower is regressed onto
                (MODEL.DISTILL.HEAD.AKD.LAYERS[-1]); layer_shape: its activation's shape.
            head_in_shapes: the student's head levels (the FCOS assistant's inputs);
                pixel_mean, pixel_std: the student's (FCOS keeps them).
            fcos_assist ... early_stop: MODEL.DISTILL.HEAD.TF's FCOS_ASSIST, FCOS_NUM_CONVS,
                FCOS_LOSS_WEIGHTS, ASSIST_LOSS_WARMUP_ITERS, SELF_FCOS_WEIGHT,
                SELF_RCNN_WEIGHT, SELF_RCNN_ADAPTER, WARMUP_ITERS, EARLY_STOP_ITER.
            base: :class:`HEADBase`'s arguments.
        """
        super().__init__(**base)
        if self_rcnn_adapter not in ("linear", "decouple"):
            raise ValueError(
                f"MODEL.DISTILL.HEAD.TF.SELF_RCNN_ADAPTER = {self_rcnn_adapter!r}; valid: "
                "linear, decouple"
            )
        self.layer = layer
        self.assist_schedule = LossSchedule(warmup=assist_warmup)
        self.self_schedule = LossSchedule(stop=early_stop, warmup=warmup)
        self.fcos_weights = tuple(fcos_loss_weights)
        self.self_fcos_weight, self.self_rcnn_weight = self_fcos_weight, self_rcnn_weight
        c = self.tower_channels
        head_in = list(head_in_shapes)
        self.fcos = None
        if fcos_assist:
            shapes = [head_in_shapes[f] for f in head_in]
            # MMDetection v2's FCOSHead as the dev branch configures it (configs/kd/
            # retina_fcos_faster.py: norm_on_bbox, centerness_on_reg, center_sampling 1.5,
            # conv_bias, GN(32), 4 convs; fcos_head.py: a Scale per level, GIoU weighted by the
            # centerness targets, reduce_mean'd positive count, closed regress_ranges). The
            # assistant never runs inference, so the test-time options do not matter.
            self.fcos = FCOS(
                backbone=_ShapeOnlyBackbone(dict(head_in_shapes)),
                head=FCOSHead(
                    input_shape=shapes,
                    conv_dims=[c] * fcos_num_convs,
                    num_classes=self.num_classes,
                    norm="GN",
                    prior_prob=0.01,
                    scale_per_level=True,
                ),
                head_in_features=head_in,
                num_classes=self.num_classes,
                center_sampling_radius=1.5,
                pixel_mean=pixel_mean,
                pixel_std=pixel_std,
                box_loss_centerness_weighted=True,
                norm_across_workers=True,
                size_range_inclusive=True,
            )
            self.self_fcos_conv = nn.Conv2d(c, c, kernel_size=1)
        out = tuple(layer_shape)
        if len(out) != 1:
            raise ValueError(
                f"TF-HEAD regresses a vector onto the assistant's {self.layer!r} output, which "
                f"is a map {out}: make MODEL.DISTILL.HEAD.AKD.LAYERS end with an fc layer."
            )
        if self_rcnn_adapter == "decouple":
            self.self_rcnn_adapter = Decouple(c, out[0], self.num_anchors)
        else:
            self.self_rcnn_adapter = nn.Linear(c, out[0])

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """Refuses a teacher and INIT_FROM_TEACHER (there is none to copy from)."""
        if teacher is not None:
            raise ValueError(
                "TFHEADDistiller is teacher-free: unset MODEL.DISTILL.TEACHER.NAME (or use "
                "HEADDistiller for a Faster R-CNN teacher)."
            )
        h = cfg.MODEL.DISTILL.HEAD
        t = h.TF
        if h.ASSIST.INIT_FROM_TEACHER:
            raise ValueError(
                "TF-HEAD has no teacher to copy the assistant from: set "
                "MODEL.DISTILL.HEAD.ASSIST.INIT_FROM_TEACHER False."
            )
        args = cls._base_args(cfg, student)
        student_shape = student.backbone.output_shape()
        layer = list(h.AKD.LAYERS)[-1]
        assistant = args["assistant"]
        layer_shape = activation_shapes(
            assistant.box_head,
            (args["assistant_channels"], *assistant.box_pooler.output_size),
            [layer],
        )[layer]
        return dict(
            args,
            layer=layer,
            layer_shape=tuple(layer_shape),
            head_in_shapes={f: student_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES},
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            fcos_assist=t.FCOS_ASSIST,
            fcos_num_convs=t.FCOS_NUM_CONVS,
            fcos_loss_weights=tuple(t.FCOS_LOSS_WEIGHTS),
            assist_warmup=t.ASSIST_LOSS_WARMUP_ITERS,
            self_fcos_weight=t.SELF_FCOS_WEIGHT,
            self_rcnn_weight=t.SELF_RCNN_WEIGHT,
            self_rcnn_adapter=t.SELF_RCNN_ADAPTER,
            warmup=t.WARMUP_ITERS,
            early_stop=t.EARLY_STOP_ITER,
        )

    def forward(self, student: DetectorOutputs, teacher, assignment):
        it = get_event_storage().iter
        warm = self.assist_schedule.weight(it)
        w_self = self.self_schedule.weight(it)
        losses, sampled, acts = self._assist_losses(student, [self.layer], warm)
        towers = student.extras["cls_tower"]
        zero = towers[0].sum() * 0.0
        losses.update({k: zero for k in self.loss_names if k not in losses})
        if self.fcos is not None:
            head_in = [student.features[f] for f in student.head_in_features]
            predictions, fcos_towers = _fcos_head_with_towers(self.fcos.head, head_in)
            fl = self.fcos.forward_training(
                student.images, head_in, predictions, student.gt_instances
            )
            for (k, v), wk in zip(
                (
                    ("cls", fl["loss_fcos_cls"]),
                    ("loc", fl["loss_fcos_loc"]),
                    ("ctr", fl["loss_fcos_ctr"]),
                ),
                self.fcos_weights,
            ):
                losses[f"loss_assist_fcos_{k}"] = v * wk * warm
            if w_self > 0 and self.self_fcos_weight > 0:
                total = sum(
                    F.mse_loss(self.self_fcos_conv(s), f.detach())
                    for s, f in zip(towers, fcos_towers)
                )
                losses["loss_distill_self_fcos"] = total * self.self_fcos_weight * w_self
        if w_self > 0 and self.self_rcnn_weight > 0:
            loss = anchor_feature_loss(
                self.self_rcnn_adapter, towers, self._id_rows(sampled), acts[self.layer].detach()
            )
            losses["loss_distill_self_rcnn"] = loss * self.self_rcnn_weight * w_self
        return losses
