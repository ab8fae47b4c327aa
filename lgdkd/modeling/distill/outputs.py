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

from ..matching.targets import DenseTargets

__all__ = ["Assignment", "DetectorOutputs"]


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
