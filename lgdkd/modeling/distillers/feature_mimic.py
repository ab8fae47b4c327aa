"""FitNet-style feature mimicking: adapted student features regressed to teacher features.

Shape shorthand: N images, C_s / C_t student / teacher channels, H x W one level.
"""

from typing import Dict, List, Optional, Tuple

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...utils.dist import count_over_workers
from ..assigners.regions import gt_box_masks, valid_region_masks
from ..distill.outputs import Assignment, DetectorOutputs
from ..distill.registries import DISTILLER_REGISTRY
from ..distill.roles import Distiller

__all__ = ["FeatureMimicDistiller", "copy_head_from_teacher", "instance_norm", "paired_features"]

_MASKS = ("all", "gt_boxes", "assigner")


def instance_norm(x, eps: float = 1e-5):
    """``F.instance_norm`` without affine parameters (per image and channel over H x W), also
    defined in training for 1x1 maps (e.g. P7 of a small image), where it gives 0."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    return (x - mean) / (var + eps).sqrt()


def copy_head_from_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Copy ``teacher.head`` into ``student.head`` (a copy, not shared); every tensor must
    exist in both with the same shape, or the error names the differences."""
    s_head, t_head = getattr(student, "head", None), getattr(teacher, "head", None)
    if s_head is None or t_head is None:
        raise ValueError(
            "MODEL.DISTILL.FEATURE_MIMIC.HEAD_INIT_FROM_TEACHER needs a dense head (``head``) "
            f"in the student ({type(student).__name__}) and the teacher "
            f"({type(teacher).__name__})."
        )
    src, dst = t_head.state_dict(), s_head.state_dict()
    bad = [
        f"{k}: student {tuple(v.shape)}, teacher "
        f"{tuple(src[k].shape) if k in src else 'missing'}"
        for k, v in dst.items()
        if k not in src or src[k].shape != v.shape
    ]
    bad += [f"{k}: only in the teacher" for k in src if k not in dst]
    if bad:
        raise ValueError(
            "MODEL.DISTILL.FEATURE_MIMIC.HEAD_INIT_FROM_TEACHER: the teacher's head differs "
            "from the student's (" + "; ".join(bad[:6]) + "). Give both the same head "
            "(classes, anchors, convs, channels) or set it False."
        )
    s_head.load_state_dict(src)


def paired_features(
    student_shapes: Dict[str, ShapeSpec],
    teacher_shapes: Dict[str, ShapeSpec],
    names: List[str],
    teacher_names: List[str],
    node: str,
) -> List[Tuple[str, str]]:
    """(student feature, teacher feature) pairs of a feature distiller's config node
    ``MODEL.DISTILL.<node>`` (IN_FEATURES ``names``, TEACHER_FEATURES ``teacher_names``, [] =
    the same names); refuses a name either side lacks and maps of different strides."""
    key = f"MODEL.DISTILL.{node}"
    teacher_names = list(teacher_names) or list(names)
    if len(teacher_names) != len(names):
        raise ValueError(
            f"{key}.TEACHER_FEATURES must have one entry per IN_FEATURES entry: "
            f"{teacher_names} vs {list(names)}"
        )
    if not names:
        raise ValueError(
            f"{key}: the student ({sorted(student_shapes)}) and the teacher "
            f"({sorted(teacher_shapes)}) share no feature name; set {key}.IN_FEATURES / "
            "TEACHER_FEATURES."
        )
    for s, t in zip(names, teacher_names):
        if s not in student_shapes:
            raise ValueError(
                f"{key}: student has no feature {s!r} (it has {sorted(student_shapes)})."
            )
        if t not in teacher_shapes:
            raise ValueError(
                f"{key}: teacher has no feature {t!r} (it has {sorted(teacher_shapes)}), "
                f"needed for student feature {s!r}; set {key}.TEACHER_FEATURES."
            )
        if student_shapes[s].stride != teacher_shapes[t].stride:
            raise ValueError(
                f"{key}: student feature {s!r} has stride {student_shapes[s].stride} but "
                f"teacher feature {t!r} has stride {teacher_shapes[t].stride}; the maps "
                "cannot be compared."
            )
    return list(zip(names, teacher_names))


def _adapter(kind: str, c_in: int, c_out: int) -> nn.Module:
    if kind == "identity":
        if c_in != c_out:
            raise ValueError(
                f"MODEL.DISTILL.FEATURE_MIMIC.ADAPTER 'identity' needs equal channels, got "
                f"student {c_in} vs teacher {c_out}: use 'conv1x1'."
            )
        return nn.Identity()
    k = {"conv1x1": 1, "conv3x3": 3}.get(kind)
    if k is None:
        raise ValueError(
            f"MODEL.DISTILL.FEATURE_MIMIC.ADAPTER = {kind!r}; valid: conv1x1, conv3x3, identity"
        )
    conv = nn.Conv2d(c_in, c_out, kernel_size=k, padding=k // 2)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


@DISTILLER_REGISTRY.register()
class FeatureMimicDistiller(Distiller):
    """MSE between ``adapter(student feature)`` and the (detached) teacher feature per level.

    Loss of level l over the selected positions P_l (mask m, summed over all workers)::

        L_l = sum_{p in P_l} sum_c (a(s)_{c,p} - t_{c,p})^2 / (C_t * sum_p m_p)

    and the distiller returns ``LOSS_WEIGHT * mean_l L_l`` as ``loss_distill_feature_mimic``.
    The selected positions are the cells inside the image (padding excluded) for MASK "all",
    inside a ground-truth box for "gt_boxes", or the assigner's ``region_masks`` for
    "assigner". Counts are averaged over workers, so the loss is independent of images per
    worker (batch-invariant).
    """

    needs_teacher = True
    loss_names = ("loss_distill_feature_mimic",)
    needs_teacher_predictions = False

    @configurable
    def __init__(
        self,
        *,
        pairs: List[Tuple[str, str]],
        student_shapes: Dict[str, ShapeSpec],
        teacher_shapes: Dict[str, ShapeSpec],
        adapter: str = "conv1x1",
        mask: str = "all",
        norm: str = "none",
        loss_weight: float = 1.0,
    ):
        """
        Args:
            pairs: (student feature, teacher feature) per level compared.
            student_shapes, teacher_shapes: the two sides' feature shapes (channels, stride).
            adapter: "conv1x1", "conv3x3" or "identity". mask: one of "all", "gt_boxes",
                "assigner". norm: "none" or "instance". loss_weight: the loss's weight.
        """
        super().__init__()
        if mask not in _MASKS:
            raise ValueError(f"MODEL.DISTILL.FEATURE_MIMIC.MASK = {mask!r}; valid: {_MASKS}")
        if norm not in ("none", "instance"):
            raise ValueError(f"MODEL.DISTILL.FEATURE_MIMIC.NORM = {norm!r}; valid: none, instance")
        self.pairs = list(pairs)
        self.strides = {s: student_shapes[s].stride for s, _ in self.pairs}
        self.adapters = nn.ModuleDict(
            {
                s: _adapter(adapter, student_shapes[s].channels, teacher_shapes[t].channels)
                for s, t in self.pairs
            }
        )
        self.mask = mask
        self.norm = norm
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """The feature shapes of both models; refuses levels either side lacks or whose strides
        differ. With HEAD_INIT_FROM_TEACHER, the teacher's dense head is copied into the
        student's here (the student's initialisation, before training)."""
        student_shape, teacher_shape = student.backbone.output_shape(), teacher.output_shape()
        c = cfg.MODEL.DISTILL.FEATURE_MIMIC
        names = list(c.IN_FEATURES) or [k for k in student_shape if k in teacher_shape]
        pairs = paired_features(
            student_shape, teacher_shape, names, list(c.TEACHER_FEATURES), "FEATURE_MIMIC"
        )
        if c.HEAD_INIT_FROM_TEACHER:
            copy_head_from_teacher(student, teacher.detector)
        return {
            "pairs": pairs,
            "student_shapes": dict(student_shape),
            "teacher_shapes": dict(teacher_shape),
            "adapter": c.ADAPTER,
            "mask": c.MASK,
            "norm": c.NORM,
            "loss_weight": c.LOSS_WEIGHT,
        }

    def _masks(self, student: DetectorOutputs, assignment: Optional[Assignment]):
        feats = {s: student.features[s] for s, _ in self.pairs}
        if self.mask == "gt_boxes":
            return gt_box_masks(student.gt_instances, feats, self.strides)
        if self.mask == "assigner":
            if assignment is None or assignment.region_masks is None:
                raise ValueError(
                    "MODEL.DISTILL.FEATURE_MIMIC.MASK is 'assigner' but no assigner produced "
                    "region_masks: set MODEL.DISTILL.ASSIGNER.NAME (e.g. GTBoxAssigner)."
                )
            return assignment.region_masks
        return valid_region_masks(student.images.image_sizes, feats, self.strides)

    def forward(self, student: DetectorOutputs, teacher: DetectorOutputs, assignment=None):
        masks = self._masks(student, assignment)
        total = 0.0
        for s, t in self.pairs:
            pred = self.adapters[s](student.features[s])
            target = teacher.features[t].detach()
            if pred.shape != target.shape:
                raise ValueError(
                    f"FeatureMimicDistiller: adapted student {s!r} {tuple(pred.shape)} vs "
                    f"teacher {t!r} {tuple(target.shape)}"
                )
            if self.norm == "instance":
                pred, target = instance_norm(pred), instance_norm(target)
            m = masks[s].to(pred.dtype)
            sq = ((pred - target) ** 2 * m).sum()
            count = count_over_workers(m.sum() * target.shape[1])
            total = total + sq / count
        return {"loss_distill_feature_mimic": self.loss_weight * total / len(self.pairs)}
