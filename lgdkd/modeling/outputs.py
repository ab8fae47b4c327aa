"""Small typed payloads exchanged between the roles of a distillation step.

Shape shorthand (as in detectron2's rpn.py):
    N: images in the batch         L: feature levels         C_l: channels of level l
    H_l, W_l: size of level l      Hi, Wi: padded image size (ImageList.tensor)
"""

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional

from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList, Instances
from torch import Tensor

__all__ = ["Assignment", "AssignsTargets", "DenseTargets", "DetectorOutputs"]


@dataclass
class DenseTargets:
    """The training targets of a dense detector for one batch, one row per anchor (location),
    level-major over the R anchors of the head levels: what its loss takes. Produced by the
    detector's assignment (the student adapter's ``targets`` step, or an assigner such as LAD
    that replaces them) and read by distillers (LD's main and VLR regions) and tools.

    Attributes:
        anchors: the anchors, in the form the detector's loss takes: (R, 4) boxes (lgdkd's GFL
            and PAA) or one detectron2 ``Boxes`` per level (detectron2's RetinaNet and FCOS).
        num_per_level: anchors of each level (sum R).
        num_classes: K.
        labels: (N, R) int64, the class of each positive in [0, K), K for background, -1 for
            anchors the loss ignores.
        matched_boxes: (N, R, 4) the ground-truth box of each positive (elsewhere a value the
            loss does not use: the anchor itself, or detectron2's choice).
        matched: (N, R) int64 index of the assigned ground-truth box, -1 for negatives; None
            when the assignment does not say (detectron2's RetinaNet / FCOS).
        valid: (N, R) bool, anchors on the image (not on batch padding), where known.
        centers, strides: (R, 2) centres and (R,) strides of the locations (GFL).
        thresholds: per image (G_i,) ATSS IoU thresholds (GFL; LD's VLR reads them).
        stats: scalars of the assignment for logging (PAA).
    """

    anchors: Any
    num_per_level: List[int]
    num_classes: int
    labels: Tensor
    matched_boxes: Tensor
    matched: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    centers: Optional[Tensor] = None
    strides: Optional[Tensor] = None
    thresholds: Optional[List[Tensor]] = None
    stats: Dict[str, float] = field(default_factory=dict)

    @property
    def positive(self) -> Tensor:
        """(N, R) bool: anchors assigned to a ground-truth box."""
        if self.matched is not None:
            return self.matched >= 0
        return (self.labels >= 0) & (self.labels < self.num_classes)


@dataclass
class DetectorOutputs:
    """What one detector computed on one batch, in the form teachers, assigners and
    distillers read. Produced by a student adapter (``run``) or by a teacher.

    Attributes:
        images: the preprocessed batch; ``images.tensor`` is (N, 3, Hi, Wi) and
            ``images.image_sizes[i]`` the valid (h, w) of image i.
        features: every feature map the backbone returned, name -> (N, C_l, H_l, W_l)
            (e.g. FPN levels "p2".."p7").
        feature_shapes: name -> ShapeSpec(channels, stride) of each entry of ``features``.
        head_in_features: the names the detection head consumes, in head order.
        predictions: raw outputs of a dense head, as the head returned them: one list per
            output kind, each with one (N, A*K_kind, H_l, W_l) tensor per head level
            (RetinaNet: [logits, box deltas]; FCOS: [logits, box deltas, centerness]).
            None for detectors without a dense head (Faster R-CNN).
        gt_instances: the ground truth of each image on the detector's device (training only).
        targets: the targets its loss is computed on (set by the distillation step before the
            task losses; None for detectors that assign inside their heads, as R-CNN).
        extras: family-specific values keyed by name (documented where they are produced).
    """

    images: ImageList
    features: Dict[str, Tensor]
    feature_shapes: Dict[str, ShapeSpec]
    head_in_features: List[str]
    predictions: Optional[List[List[Tensor]]] = None
    gt_instances: Optional[List[Instances]] = None
    targets: Optional[DenseTargets] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    def with_detached_features(self) -> "DetectorOutputs":
        """A copy whose ``features`` are detached (nothing else is copied)."""
        return replace(self, features={k: v.detach() for k, v in self.features.items()})


@dataclass
class Assignment:
    """Result of an assigner: where to distill and, optionally, replacement targets.

    Attributes:
        region_masks: level name -> (N, 1, H_l, W_l) non-negative weights of the positions
            where a distiller should take its loss (1 = full weight, 0 = ignored).
        targets: targets that replace the student's own (label-assignment distillation: LAD's
            teacher assignment, CoLAD's shared one, which a co-trained teacher's loss uses too).
        extras: assigner-specific values (documented by each assigner).
    """

    region_masks: Optional[Dict[str, Tensor]] = None
    targets: Optional[DenseTargets] = None
    extras: Dict[str, Any] = field(default_factory=dict)


class AssignsTargets:
    """A dense detector whose training is two steps: ``dense_targets(features, predictions,
    gt_instances) -> DenseTargets`` (the assignment, no gradient) and
    ``dense_losses(predictions, targets) -> losses``; its ``forward_training`` is the two in a
    row. ``features`` are the head's input maps in head order. lgdkd's GFL and PAA are such
    detectors; the student adapter gives detectron2's RetinaNet and FCOS the same two steps."""

    def dense_targets(self, features, predictions, gt_instances) -> DenseTargets:
        raise NotImplementedError

    def dense_losses(self, predictions, targets: DenseTargets) -> Dict[str, Tensor]:
        raise NotImplementedError

    def forward_training(self, images, features, predictions, gt_instances):
        return self.dense_losses(
            predictions, self.dense_targets(features, predictions, gt_instances)
        )
