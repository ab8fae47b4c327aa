"""CoLAD: co-learning label assignment distillation (Nguyen et al., WACV 2022,
arXiv:2108.10520; cybercore-co-ltd/CoLAD ``PAA_CoLAD_StdMean_Head``).

Two PAA networks, N1 (the student) and N2 (a :class:`CoLearningTeacher`), train together on one
shared assignment per step. Both compute the PAA cost of every pre-assigned (anchor, box) pair
from their own detached predictions; for each (image, box, level) group the costs of one
network are used:

* 2 or more pairs: N2's iff std(T) / mean(T) >= std(S) / mean(S) (unbiased std; S, T the
  costs of N1, N2): the network whose costs separate good from bad anchors more sharply;
* 1 pair: N2's iff mean(T) < mean(S).

Top-k per level on the chosen costs, then one GMM per box over its levels (which may mix the
two networks' costs) and the MMDetection rule, as PAA. The targets go to the student's loss and
to N2's loss (``Assignment.targets``). Logged per step (``colad/``): means over
groups of the cost means (s_mean, t_mean) and of the stds of groups with 2+ pairs (s_std,
t_std), and t_ratio, the fraction of groups that used N2's costs.
"""

import torch
from detectron2.config import configurable

from ..detectors.paa import check_same_anchor_layout
from ..distill.outputs import Assignment, DetectorOutputs
from ..distill.registries import ASSIGNER_REGISTRY
from ..distill.roles import Assigner, Borrowed
from ..matching.paa import anchor_costs, paa_assign
from .lad import positive_region_masks

__all__ = ["CoLADAssigner", "colad_choose_costs"]


def colad_choose_costs(s_costs, t_costs, groups):
    """Per pair the cost of the network chosen for its group.

    Args:
        s_costs, t_costs: (P,) costs of N1 and N2 for the same pairs.
        groups: (P,) int64 group id per pair (e.g. box id x levels + level), any values.
    Returns:
        (costs (P,), use_t (G,) bool per group, stats dict).
    """
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    g = counts.numel()
    n = counts.to(s_costs.dtype)

    def mean_std(x):
        total = torch.zeros(g, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
        mean = total / n
        sq = torch.zeros(g, dtype=x.dtype, device=x.device).index_add_(
            0, inverse, (x - mean[inverse]) ** 2
        )
        std = torch.sqrt(sq / (n - 1).clamp(min=1))
        return mean, std

    s_mean, s_std = mean_std(s_costs.double())
    t_mean, t_std = mean_std(t_costs.double())
    multi = counts > 1
    tiny = torch.finfo(torch.float64).tiny
    use_t = torch.where(
        multi,
        t_std / t_mean.clamp(min=tiny) >= s_std / s_mean.clamp(min=tiny),
        t_mean < s_mean,
    )
    costs = torch.where(use_t[inverse], t_costs, s_costs)
    stats = {}
    if g > 0:
        stats = {
            "s_mean": float(s_mean.mean()),
            "t_mean": float(t_mean.mean()),
            "t_ratio": float(use_t.double().mean()),
        }
        if bool(multi.any()):
            stats["s_std"] = float(s_std[multi].mean())
            stats["t_std"] = float(t_std[multi].mean())
    return costs, use_t, stats


@ASSIGNER_REGISTRY.register()
class CoLADAssigner(Assigner):
    """The shared CoLAD assignment of a PAA student and a co-learned PAA teacher (same anchor
    layout, checked at build time). ``targets``: the shared DenseTargets;
    ``extras["colad"]``: the statistics above."""

    @configurable
    def __init__(self, *, student_parts: Borrowed, teacher_parts: Borrowed):
        """
        Args:
            student_parts: the student PAA's ``anchors``, ``valid_mask``,
                ``flatten_predictions``, ``decode``, ``num_classes`` and ``assign_kwargs``
                (both networks' costs are computed on its anchor layout).
            teacher_parts: the co-learned network's ``flatten_predictions`` and ``decode``.
        """
        super().__init__()
        self.student_parts = student_parts
        self.teacher_parts = teacher_parts

    @classmethod
    def from_config(cls, cfg, *, student, teacher):
        """Refuses a teacher that is not trained with the student or whose anchor layout
        differs from the student's."""
        if teacher is None or not teacher.trainable or teacher.detector is None:
            raise ValueError(
                "MODEL.DISTILL.ASSIGNER.NAME 'CoLADAssigner' needs a second network trained "
                "with the student: set MODEL.DISTILL.TEACHER.NAME 'CoLearningTeacher' and its "
                "CONFIG_FILE (a PAA config)."
            )
        check_same_anchor_layout(student, teacher.detector, what="co-learned network")
        return {
            "student_parts": Borrowed(
                anchors=student.anchors,
                valid_mask=student.valid_mask,
                flatten_predictions=student.flatten_predictions,
                decode=student.decode,
                num_classes=student.num_classes,
                assign_kwargs=student.assign_kwargs,
            ),
            "teacher_parts": Borrowed(
                flatten_predictions=teacher.detector.flatten_predictions,
                decode=teacher.detector.decode,
            ),
        }

    @torch.no_grad()
    def forward(self, student: DetectorOutputs, teacher: DetectorOutputs) -> Assignment:
        model, other = self.student_parts, self.teacher_parts
        feats = [student.features[f] for f in student.head_in_features]
        anchors, counts = model.anchors(feats)
        gt_instances = student.gt_instances
        valid = model.valid_mask(feats, [gt.image_size for gt in gt_instances])
        s_logits, s_deltas, _ = model.flatten_predictions(student.predictions)
        t_logits, t_deltas, _ = other.flatten_predictions(teacher.predictions)
        s_boxes = model.decode(s_deltas.detach(), anchors[None])
        t_boxes = other.decode(t_deltas.detach(), anchors[None])
        if sum(len(gt) for gt in gt_instances) > 0:
            all_boxes = torch.cat([gt.gt_boxes.tensor for gt in gt_instances]).float()
            all_labels = torch.cat([gt.gt_classes for gt in gt_instances])
        else:
            all_boxes, all_labels = None, None
        kw = model.assign_kwargs
        stats = {}

        def costs_fn(img, aidx, gidx, box_ids, levels):
            if box_ids.numel() == 0:
                return s_boxes.new_zeros((0,))
            labels, boxes = all_labels[box_ids], all_boxes[box_ids]
            args = (kw["cost_reg_weight"], kw["focal_alpha"], kw["focal_gamma"])
            s = anchor_costs(s_logits[img, aidx].detach(), s_boxes[img, aidx], labels, boxes, *args)
            t = anchor_costs(t_logits[img, aidx].detach(), t_boxes[img, aidx], labels, boxes, *args)
            costs, _, st = colad_choose_costs(s, t, box_ids * len(counts) + levels)
            stats.update(st)
            return costs

        targets = paa_assign(
            anchors,
            counts,
            valid,
            gt_instances,
            s_logits.detach(),
            s_boxes,
            model.num_classes,
            costs_fn=costs_fn,
            **kw,
        )
        targets.stats.update({f"colad_{k}": v for k, v in stats.items()})
        return Assignment(
            region_masks=positive_region_masks(targets.positive, student, targets.num_per_level),
            targets=targets,
            extras={"colad": stats},
        )
