"""Stateless student adapters: how the distillation meta-architecture drives each detector
family without copying it.

An adapter exposes the steps of the detector's training forward, so that the teacher,
assigner and distillers can run between them:

* ``preprocess(model, batched_inputs) -> (ImageList, Optional[List[Instances]])``
* ``run(model, images, gt_instances, with_head=True) -> DetectorOutputs``: backbone (+ dense
  head unless ``with_head`` is False, e.g. for a teacher whose distillers read features only)
* ``targets(model, outputs) -> Optional[DenseTargets]``: the detector's own assignment for
  its loss (no gradient); None where it assigns inside its heads (R-CNN's RPN and RoI
  sampling)
* ``task_losses(model, outputs) -> Dict[str, Tensor]``: the detector's own losses on
  ``outputs.targets`` (set by the caller: the student's own, or an assigner's)
* ``losses_on_features(model, outputs, features) -> Dict[str, Tensor]``: the same detector's
  losses with its head run on other feature maps of the same shapes (e.g. LGD's teacher maps),
  on the targets of ``outputs``

Adapters hold no state and no parameters; one adapter serves every model of its family.
Register new ones in ``STUDENT_ADAPTER_REGISTRY``; :func:`build_adapter` picks the first whose
``supports(model)`` is true, most specific first (``priority``).
"""

from typing import Dict, List, Optional

import torch
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.fcos import FCOS as D2FCOS
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.registry import Registry
from torch import Tensor

from ..matching.targets import AssignsTargets, DenseTargets
from .outputs import DetectorOutputs

__all__ = [
    "STUDENT_ADAPTER_REGISTRY",
    "StudentAdapter",
    "DenseDetectorAdapter",
    "GeneralizedRCNNAdapter",
    "build_adapter",
    "num_classes_of",
]

STUDENT_ADAPTER_REGISTRY = Registry("STUDENT_ADAPTER")
STUDENT_ADAPTER_REGISTRY.__doc__ = """
Adapters that split a detector's training forward into preprocess / run / task_losses.
Each registered class is instantiated without arguments and must define
``supports(model) -> bool`` and a class attribute ``priority`` (higher is tried first).
"""


class StudentAdapter:
    """Base class; see the module docstring for the protocol."""

    priority = 0

    @staticmethod
    def supports(model) -> bool:
        raise NotImplementedError

    def preprocess(self, model, batched_inputs):
        images = model.preprocess_image(batched_inputs)
        gt = None
        if "instances" in batched_inputs[0]:
            gt = [x["instances"].to(images.tensor.device) for x in batched_inputs]
        return images, gt

    def _backbone(self, model, images: ImageList):
        features = model.backbone(images.tensor)
        shapes = model.backbone.output_shape()
        return features, {k: shapes[k] for k in features}


@STUDENT_ADAPTER_REGISTRY.register()
class DenseDetectorAdapter(StudentAdapter):
    """detectron2 ``DenseDetector`` subclasses: RetinaNet, FCOS and lgdkd's dense detectors.

    Relies on the DenseDetector template: ``backbone``, ``head_in_features``, ``head`` and
    ``forward_training(images, features, predictions, gt_instances)``.
    """

    @staticmethod
    def supports(model) -> bool:
        return isinstance(model, DenseDetector)

    def run(
        self,
        model,
        images: ImageList,
        gt_instances: Optional[List[Instances]] = None,
        with_head: bool = True,
    ):
        features, shapes = self._backbone(model, images)
        predictions, extras = None, {}
        if with_head:
            head_in = [features[f] for f in model.head_in_features]
            predictions = list(model.head(head_in))
        return DetectorOutputs(
            images=images,
            features=features,
            feature_shapes=shapes,
            head_in_features=list(model.head_in_features),
            predictions=predictions,
            gt_instances=gt_instances,
            extras=extras,
        )

    def targets(self, model, outputs: DetectorOutputs) -> Optional[DenseTargets]:
        """The detector's assignment: ``dense_targets`` of an :class:`AssignsTargets` detector
        (lgdkd's GFL, PAA), or detectron2's ``anchor_generator`` + ``label_anchors`` of its
        RetinaNet and FCOS; None for another DenseDetector (its ``forward_training`` assigns)."""
        if outputs.gt_instances is None:
            raise ValueError("Training needs 'instances' in every input dict.")
        head_in = [outputs.features[f] for f in outputs.head_in_features]
        if isinstance(model, AssignsTargets):
            return model.dense_targets(head_in, outputs.predictions, outputs.gt_instances)
        if isinstance(model, (RetinaNet, D2FCOS)):
            with torch.no_grad():
                anchors = model.anchor_generator(head_in)
                labels, boxes = model.label_anchors(anchors, outputs.gt_instances)
            return DenseTargets(
                anchors=anchors,
                num_per_level=[len(a) for a in anchors],
                num_classes=model.num_classes,
                labels=torch.stack(labels),
                matched_boxes=torch.stack([getattr(b, "tensor", b) for b in boxes]),
            )
        return None

    def task_losses(self, model, outputs: DetectorOutputs) -> Dict[str, Tensor]:
        """The detector's losses on its predictions and ``outputs.targets``."""
        if outputs.gt_instances is None:
            raise ValueError("Training needs 'instances' in every input dict.")
        head_in = [outputs.features[f] for f in outputs.head_in_features]
        return self._losses(model, outputs, head_in, outputs.predictions)

    def _losses(self, model, outputs, head_in, predictions):
        targets = outputs.targets
        if targets is None:  # a family without the targets step
            return model.forward_training(
                outputs.images, head_in, predictions, outputs.gt_instances
            )
        if isinstance(model, AssignsTargets):
            return model.dense_losses(predictions, targets)
        # detectron2's RetinaNet / FCOS: its forward_training after label_anchors
        kinds = [model.num_classes, 4] + ([1] if isinstance(model, D2FCOS) else [])
        transposed = model._transpose_dense_predictions(predictions, kinds)
        labels, boxes = list(targets.labels), list(targets.matched_boxes)
        if isinstance(model, D2FCOS):  # its loss takes the matched boxes as Boxes
            logits, deltas, centerness = transposed
            boxes = [Boxes(b) for b in boxes]
            return model.losses(targets.anchors, logits, labels, deltas, boxes, centerness)
        logits, deltas = transposed
        return model.losses(targets.anchors, logits, labels, deltas, boxes)

    def losses_on_features(
        self, model, outputs: DetectorOutputs, features: Dict[str, Tensor]
    ) -> Dict[str, Tensor]:
        """The head on ``features`` (same levels and shapes as ``outputs.features``) and the
        detector's loss on the targets of ``outputs``."""
        head_in = [features[f] for f in outputs.head_in_features]
        for f, x in zip(outputs.head_in_features, head_in):
            if x.shape != outputs.features[f].shape:
                raise ValueError(
                    f"losses_on_features: feature {f!r} has shape {tuple(x.shape)}, the "
                    f"student's {tuple(outputs.features[f].shape)}."
                )
        return self._losses(model, outputs, head_in, list(model.head(head_in)))


@STUDENT_ADAPTER_REGISTRY.register()
class GeneralizedRCNNAdapter(StudentAdapter):
    """detectron2 ``GeneralizedRCNN`` (Faster / Mask R-CNN): the RPN and the RoI heads run in
    ``task_losses``, on the features ``run`` computed."""

    @staticmethod
    def supports(model) -> bool:
        return isinstance(model, GeneralizedRCNN)

    def run(
        self,
        model,
        images: ImageList,
        gt_instances: Optional[List[Instances]] = None,
        with_head: bool = True,
    ):
        features, shapes = self._backbone(model, images)
        return DetectorOutputs(
            images=images,
            features=features,
            feature_shapes=shapes,
            head_in_features=list(model.roi_heads.in_features),
            predictions=None,
            gt_instances=gt_instances,
        )

    def targets(self, model, outputs: DetectorOutputs) -> None:
        """None: the RPN assigns its anchors and the RoI heads sample their proposals inside
        ``task_losses`` (with the random sampling of detectron2)."""
        return None

    def task_losses(self, model, outputs: DetectorOutputs) -> Dict[str, Tensor]:
        if outputs.gt_instances is None:
            raise ValueError("Training needs 'instances' in every input dict.")
        images, features, gt = outputs.images, outputs.features, outputs.gt_instances
        proposals, proposal_losses = model.proposal_generator(images, features, gt)
        _, detector_losses = model.roi_heads(images, features, proposals, gt)
        return {**detector_losses, **proposal_losses}

    def losses_on_features(
        self, model, outputs: DetectorOutputs, features: Dict[str, Tensor]
    ) -> Dict[str, Tensor]:
        """RPN and RoI heads on ``features`` with the ground truth of ``outputs``: their own
        proposals and their own RoI sampling, as LGD trains its teacher for R-CNN."""
        for f, x in outputs.features.items():
            if f not in features or features[f].shape != x.shape:
                raise ValueError(
                    f"losses_on_features: feature {f!r} missing or of another shape than the "
                    f"student's {tuple(x.shape)}."
                )
        other = DetectorOutputs(
            images=outputs.images,
            features=features,
            feature_shapes=outputs.feature_shapes,
            head_in_features=outputs.head_in_features,
            gt_instances=outputs.gt_instances,
        )
        return self.task_losses(model, other)


def build_adapter(model) -> StudentAdapter:
    """The adapter of ``model``'s family; a clear error if there is none."""
    classes = sorted((c for _, c in STUDENT_ADAPTER_REGISTRY), key=lambda c: -c.priority)
    for cls in classes:
        if cls.supports(model):
            return cls()
    raise TypeError(
        f"No student adapter supports {type(model).__name__}. Supported families: "
        f"{', '.join(c.__name__ for c in classes)}. Register one in STUDENT_ADAPTER_REGISTRY "
        "(see lgdkd/modeling/distill/adapters.py)."
    )


def num_classes_of(model) -> int:
    """Foreground classes a detector predicts (-1 when it does not say)."""
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "num_classes"):
        return int(roi_heads.num_classes)
    return -1
