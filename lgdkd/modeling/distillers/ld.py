"""Localization distillation (Zheng et al., "Localization Distillation for Dense Object
Detection", CVPR 2022, arXiv:2102.12252; official code HikariTJU/LD).

A frozen GFocal teacher and a GFocal student see the same padded batch; since both have one
anchor per location on the same levels, the teacher's output at location (image, level, y, x)
is compared with the student's at the same location. Regions come from the student's own ATSS
assignment (``student.targets``, :class:`lgdkd.modeling.matching.targets.DenseTargets`).

Shape shorthand: N images, R locations (all levels), P positives, V VLR locations,
n = REG_MAX, K classes; l_e = KL over the n + 1 bins of box side e at temperature T, times T^2,
averaged over bins ("mean", official) or summed.

Terms (MODEL.DISTILL.LD, each skipped when its weight is 0):

* ``loss_distill_ld`` (Main LD): S = sum_{i in P} w_i sum_e l_e / 4, w_i the student's detached
  max score (V2: max joint score);
* ``loss_distill_ld_vlr`` (VLR LD): S = sum_{a in V} v_a sum_e l_e / 16, v_a the anchor's IoU with
  its box;
* ``loss_distill_kd`` (Main KD): per level, sum_{i in P_l} T^2 mean_c KL(softmax(t/T) ||
  softmax(s/T)) / |P_l|, summed over levels (KD_ACTIVATION "sigmoid": a binary KL per class);
* ``loss_distill_kd_vlr``: the same on the VLR.

NORM "per_image" multiplies the LD sums by REFERENCE_IMAGES / images per worker (averaged over
workers); "weight_sum" uses sum w sum_e l_e / (4 sum w) instead; "legacy" keeps the official
per-GPU sums. KD counts are averaged over workers except in "legacy". See lgdkd/config.py.
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from torch import Tensor, nn

from ...layers import class_kd_kl, localization_kl
from ...utils.dist import count_over_workers, mean_over_workers
from ..detectors.gfl import GFL
from ..distill.outputs import DetectorOutputs
from ..distill.registries import DISTILLER_REGISTRY
from ..distill.roles import Distiller
from ..matching.atss import vlr_region
from ..matching.targets import DenseTargets

__all__ = ["LDDistiller", "check_ld_teacher"]

_NORMS = ("per_image", "weight_sum", "legacy")


def check_ld_teacher(student: nn.Module, teacher_detector: nn.Module, teacher_config: str = ""):
    """Refuse a teacher whose outputs cannot be compared location by location with the
    student's: both must be GFL detectors with the same levels, strides, REG_MAX and classes."""
    where = f" (MODEL.DISTILL.TEACHER.CONFIG_FILE = {teacher_config!r})" if teacher_config else ""
    if not isinstance(student, GFL):
        raise ValueError(
            f"LDDistiller distils box-side distributions: the student must be a GFL detector "
            f"(MODEL.DISTILL.STUDENT_META_ARCHITECTURE 'GFL'), not {type(student).__name__}."
        )
    if not isinstance(teacher_detector, GFL):
        raise ValueError(
            f"LDDistiller needs a GFL teacher{where}, got {type(teacher_detector).__name__}: the "
            "teacher must predict box-side distributions (LD issue #68)."
        )
    pairs = [
        (
            "levels (MODEL.GFL.IN_FEATURES)",
            student.head_in_features,
            teacher_detector.head_in_features,
        ),
        ("strides", student.strides, teacher_detector.strides),
        ("MODEL.GFL.REG_MAX", student.reg_max, teacher_detector.reg_max),
        ("classes", student.num_classes, teacher_detector.num_classes),
    ]
    for what, s, t in pairs:
        if isinstance(s, (list, tuple)):
            s, t = list(s), list(t)
        if s != t:
            raise ValueError(
                f"LDDistiller: the teacher{where} has {what} {t} but the student has {s}; LD "
                "compares outputs location by location, so they must be equal."
            )


@DISTILLER_REGISTRY.register()
class LDDistiller(Distiller):
    """Main LD, VLR LD and classification KD from a frozen GFL teacher (see the module
    docstring); keys under MODEL.DISTILL.LD."""

    needs_teacher = True
    needs_teacher_predictions = True

    @configurable
    def __init__(
        self,
        *,
        reg_max: int,
        num_classes: int,
        dgqp: bool = False,
        loss_weight: float = 0.25,
        temperature: float = 10.0,
        vlr_weight: float = 0.25,
        vlr_temperature: float = 10.0,
        vlr_alpha: float = 0.25,
        vlr_metric: str = "legacy_iof_diou",
        kd_weight: float = 10.0,
        kd_temperature: float = 2.0,
        kd_vlr_weight: float = 0.0,
        kd_activation: str = "softmax",
        norm: str = "per_image",
        reference_images: int = 3,
        bin_reduction: str = "mean",
    ):
        """
        Args:
            reg_max, num_classes, dgqp: the student's GFL head (the teacher's must match).
            The rest: MODEL.DISTILL.LD's keys of the same names (lower case; loss_weight and
            temperature are Main LD's LOSS_WEIGHT and TEMPERATURE), see lgdkd/config.py.
        """
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"MODEL.DISTILL.LD.NORM = {norm!r}; valid: {', '.join(_NORMS)}")
        if bin_reduction not in ("mean", "sum"):
            raise ValueError(
                f"MODEL.DISTILL.LD.BIN_REDUCTION = {bin_reduction!r}; valid: mean, sum"
            )
        if vlr_metric not in ("legacy_iof_diou", "diou", "iou"):
            raise ValueError(
                f"MODEL.DISTILL.LD.VLR_METRIC = {vlr_metric!r}; valid: legacy_iof_diou, diou, iou"
            )
        for key, value in (
            ("TEMPERATURE", temperature),
            ("VLR_TEMPERATURE", vlr_temperature),
            ("KD_TEMPERATURE", kd_temperature),
        ):
            if value <= 0:
                raise ValueError(f"MODEL.DISTILL.LD.{key} must be > 0, got {value}")
        if reference_images < 1:
            raise ValueError(
                f"MODEL.DISTILL.LD.REFERENCE_IMAGES must be >= 1, got {reference_images}"
            )
        self.w_ld, self.t_ld = loss_weight, temperature
        self.w_vlr, self.t_vlr = vlr_weight, vlr_temperature
        self.alpha, self.metric = vlr_alpha, vlr_metric
        self.w_kd, self.t_kd, self.w_kd_vlr = kd_weight, kd_temperature, kd_vlr_weight
        self.norm, self.ref_images, self.bins = norm, reference_images, bin_reduction
        if kd_activation not in ("softmax", "sigmoid"):
            raise ValueError(
                f"MODEL.DISTILL.LD.KD_ACTIVATION = {kd_activation!r}; valid: softmax, sigmoid"
            )
        self.kd_activation = kd_activation
        names = []
        for name, w in (
            ("loss_distill_ld", self.w_ld),
            ("loss_distill_ld_vlr", self.w_vlr),
            ("loss_distill_kd", self.w_kd),
            ("loss_distill_kd_vlr", self.w_kd_vlr),
        ):
            if w != 0:
                names.append(name)
        if not names:
            raise ValueError(
                "MODEL.DISTILL.LD: every loss weight is 0, LDDistiller would do nothing."
            )
        self.loss_names = tuple(names)
        self.reg_max = reg_max
        self.num_classes = num_classes
        if self.num_classes == 1 and self.kd_activation == "softmax":
            for key, weight in (("KD_WEIGHT", self.w_kd), ("KD_VLR_WEIGHT", self.w_kd_vlr)):
                if weight:
                    raise ValueError(
                        f"MODEL.DISTILL.LD.{key} = {weight:g} on a one-class detector: the KD's "
                        "softmax over one class is always 1, so the loss would be 0 on every "
                        "image. Set MODEL.DISTILL.LD.KD_ACTIVATION 'sigmoid' (binary KL per "
                        f"class) or MODEL.DISTILL.LD.{key} 0."
                    )
        self.dgqp = dgqp

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """MODEL.DISTILL.LD and the student's head sizes; refuses a teacher whose levels,
        strides, REG_MAX or classes differ from the student's (:func:`check_ld_teacher`)."""
        check_ld_teacher(student, teacher.detector, teacher.config_file)
        c = cfg.MODEL.DISTILL.LD
        return {
            "reg_max": student.reg_max,
            "num_classes": student.num_classes,
            "dgqp": student.dgqp,
            "loss_weight": c.LOSS_WEIGHT,
            "temperature": c.TEMPERATURE,
            "vlr_weight": c.VLR_WEIGHT,
            "vlr_temperature": c.VLR_TEMPERATURE,
            "vlr_alpha": c.VLR_ALPHA,
            "vlr_metric": c.VLR_METRIC,
            "kd_weight": c.KD_WEIGHT,
            "kd_temperature": c.KD_TEMPERATURE,
            "kd_vlr_weight": c.KD_VLR_WEIGHT,
            "kd_activation": c.KD_ACTIVATION,
            "norm": c.NORM,
            "reference_images": c.REFERENCE_IMAGES,
            "bin_reduction": c.BIN_REDUCTION,
        }

    # ------------------------------------------------------------------------------ helpers
    def _flatten(self, predictions: List[List[Tensor]], n: int):
        """(N, R, K) logits, (N, R, 4 (n+1)) box logits [, (N, R, 1) quality]."""
        out = []
        for level_maps in predictions:
            out.append(
                torch.cat([x.permute(0, 2, 3, 1).reshape(n, -1, x.shape[1]) for x in level_maps], 1)
            )
        return out

    def _check_shapes(self, student: DetectorOutputs, teacher: DetectorOutputs):
        if teacher.predictions is None:
            raise ValueError("LDDistiller: the teacher ran without its head (no predictions).")
        for kind in (0, 1):
            for lvl, (s, t) in enumerate(zip(student.predictions[kind], teacher.predictions[kind])):
                if s.shape != t.shape:
                    raise ValueError(
                        f"LDDistiller: level {student.head_in_features[lvl]} of the student's "
                        f"{'class' if kind == 0 else 'box'} output is {tuple(s.shape)} but the "
                        f"teacher's is {tuple(t.shape)}: both must see the same padded batch "
                        "(same INPUT sizes and backbone size_divisibility)."
                    )

    def _kl_sides(self, s_reg: Tensor, t_reg: Tensor, temperature: float) -> Tensor:
        """(M, 4 (n+1)) x 2 -> (M,) sum over the 4 sides of l_e."""
        b = self.reg_max + 1
        kl = localization_kl(
            s_reg.reshape(-1, b), t_reg.reshape(-1, b), temperature, bin_reduction=self.bins
        )
        return kl.reshape(-1, 4).sum(dim=1)

    def _image_factor(self, n_images: int, like: Tensor) -> Tensor:
        return self.ref_images / mean_over_workers(like.new_tensor(float(n_images)))

    def _per_level_kd(self, s_cls, t_cls, mask: Tensor, level_of: Tensor, num_levels: int):
        """sum over levels of (sum of KD over the masked locations of the level / their count)."""
        kd = class_kd_kl(s_cls[mask], t_cls[mask], self.t_kd, self.kd_activation)  # (M,)
        levels = level_of[None].expand_as(mask)[mask]
        sums = torch.zeros(num_levels, dtype=kd.dtype, device=kd.device).index_add_(0, levels, kd)
        counts = torch.bincount(levels, minlength=num_levels).to(kd.dtype)
        if self.norm == "legacy":
            return (sums / counts.clamp(min=1.0)).sum()
        return (sums / count_over_workers(counts)).sum()

    @torch.no_grad()
    def vlr_weights(self, targets: DenseTargets, gt_instances) -> Tensor:
        """LD's Valuable Localization Region of each image of the batch, from the student's ATSS
        ``targets`` (whose ``positive`` locations are the main region): (N, R) weight of every
        location, its IoU with the chosen box inside the region and 0 outside
        (:func:`~lgdkd.modeling.matching.atss.vlr_region` with VLR_ALPHA and VLR_METRIC)."""
        return torch.stack(
            [
                vlr_region(
                    targets.anchors,
                    gt.gt_boxes.tensor,
                    targets.thresholds[i],
                    targets.valid[i],
                    self.alpha,
                    self.metric,
                )[0]
                for i, gt in enumerate(gt_instances)
            ]
        )

    # ------------------------------------------------------------------------------ forward
    def forward(self, student: DetectorOutputs, teacher: DetectorOutputs, assignment=None):
        targets = student.targets
        if targets is None or targets.thresholds is None:
            raise ValueError(
                "LDDistiller needs the student's ATSS targets (``student.targets`` of a GFL "
                "student, set by DistillationDetector before the distillers run)."
            )
        self._check_shapes(student, teacher)
        n = len(student.gt_instances)
        s_flat = self._flatten(student.predictions, n)
        t_flat = self._flatten(teacher.predictions, n)
        s_cls, s_reg = s_flat[0].float(), s_flat[1].float()
        t_cls, t_reg = t_flat[0].float().detach(), t_flat[1].float().detach()
        pos = targets.positive
        with torch.no_grad():
            score = s_cls.sigmoid() * s_flat[2].float() if self.dgqp else s_cls.sigmoid()
            w_all = score.amax(dim=2)  # (N, R)
        level_of = torch.cat(
            [
                torch.full((c,), i, dtype=torch.int64, device=pos.device)
                for i, c in enumerate(targets.num_per_level)
            ]
        )
        losses: Dict[str, Tensor] = {}
        zero = s_reg.sum() * 0.0

        if self.w_ld != 0:
            w = w_all[pos]
            kl = self._kl_sides(s_reg[pos], t_reg[pos], self.t_ld)
            losses["loss_distill_ld"] = self.w_ld * self._normalise(
                (w * kl).sum(), w.sum(), 4.0, n, zero
            )

        vlr = None
        if self.w_vlr != 0 or self.w_kd_vlr != 0:
            vlr = self.vlr_weights(targets, student.gt_instances)  # (N, R)
        if self.w_vlr != 0:
            region = vlr > 0
            v = vlr[region]
            kl = self._kl_sides(s_reg[region], t_reg[region], self.t_vlr)
            losses["loss_distill_ld_vlr"] = self.w_vlr * self._normalise(
                (v * kl).sum(), v.sum(), 16.0, n, zero
            )
        num_levels = len(targets.num_per_level)
        if self.w_kd != 0:
            losses["loss_distill_kd"] = self.w_kd * (
                self._per_level_kd(s_cls, t_cls, pos, level_of, num_levels) + zero
            )
        if self.w_kd_vlr != 0:
            losses["loss_distill_kd_vlr"] = self.w_kd_vlr * (
                self._per_level_kd(s_cls, t_cls, vlr > 0, level_of, num_levels) + zero
            )
        return losses

    def _normalise(self, weighted_sum: Tensor, weight_sum: Tensor, divisor: float, n, zero):
        """An LD sum under MODEL.DISTILL.LD.NORM (``divisor``: the official constant, 4 for
        Main LD and 16 for VLR LD)."""
        if self.norm == "legacy":
            return weighted_sum / divisor + zero
        if self.norm == "per_image":
            return weighted_sum / divisor * self._image_factor(n, weighted_sum) + zero
        total = count_over_workers(weight_sum, minimum=1e-6)
        return weighted_sum / (4.0 * total) + zero
