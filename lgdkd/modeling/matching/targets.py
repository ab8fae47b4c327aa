"""What an assignment produces: the per-anchor targets of a dense detector for one batch, and
the protocol of detectors that train in two steps (assign, then the loss on the targets)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from torch import Tensor

__all__ = ["AssignsTargets", "DenseTargets"]


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
