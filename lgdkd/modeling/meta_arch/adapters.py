"""Stateless student adapters: how the distillation meta-architecture drives each detector
family without copying it.

An adapter exposes three steps of the detector's training forward, so that the teacher,
assigner and distillers can run between them:

* ``preprocess(model, batched_inputs) -> (ImageList, Optional[List[Instances]])``
* ``run(model, images, gt_instances, with_head=True) -> DetectorOutputs``: backbone (+ dense
  head unless ``with_head`` is False, e.g. for a teacher whose distillers read features only)
* ``task_losses(model, outputs, assignment) -> Dict[str, Tensor]``: the detector's own losses
* ``losses_on_features(model, outputs, features) -> Dict[str, Tensor]``: the same detector's
  losses with its head run on other feature maps of the same shapes (e.g. LGD's teacher maps),
  reusing the targets ``task_losses`` assigned to ``outputs`` where the family allows it

Adapters hold no state and no parameters; one adapter serves every model of its family.
Register new ones in ``STUDENT_ADAPTER_REGISTRY``; :func:`build_adapter` picks the first whose
``supports(model)`` is true, most specific first (``priority``).
"""

import contextlib
from typing import Dict, List, Optional

from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import ImageList, Instances
from detectron2.utils.registry import Registry
from torch import Tensor

from ..outputs import Assignment, DetectorOutputs

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
            if type(model.head) is RetinaNetHead:
                predictions, extras["cls_tower"] = _retinanet_head_with_towers(model.head, head_in)
            else:
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

    def task_losses(
        self, model, outputs: DetectorOutputs, assignment: Optional[Assignment] = None
    ) -> Dict[str, Tensor]:
        """``model.forward_training``; the targets its ``label_anchors`` assigned are kept in
        ``outputs.extras["label_anchors"]``. An ``assignment`` whose ``extras`` hold
        "label_anchors" (e.g. LAD's teacher targets) replaces the model's own assignment."""
        if outputs.gt_instances is None:
            raise ValueError("Training needs 'instances' in every input dict.")
        head_in = [outputs.features[f] for f in outputs.head_in_features]
        if assignment is not None and "label_anchors" in assignment.extras:
            # label-assignment distillation: the student trains on the assigner's targets
            outputs.extras["label_anchors"] = assignment.extras["label_anchors"]
        with _recorded_label_anchors(model, outputs.extras):
            return model.forward_training(
                outputs.images, head_in, outputs.predictions, outputs.gt_instances
            )

    def losses_on_features(
        self, model, outputs: DetectorOutputs, features: Dict[str, Tensor]
    ) -> Dict[str, Tensor]:
        """The head on ``features`` (same levels and shapes as ``outputs.features``) and the
        detector's loss with the anchor targets of ``outputs`` (recorded by ``task_losses``;
        assigned afresh if it has not run)."""
        head_in = [features[f] for f in outputs.head_in_features]
        for f, x in zip(outputs.head_in_features, head_in):
            if x.shape != outputs.features[f].shape:
                raise ValueError(
                    f"losses_on_features: feature {f!r} has shape {tuple(x.shape)}, the "
                    f"student's {tuple(outputs.features[f].shape)}."
                )
        predictions = list(model.head(head_in))
        with _recorded_label_anchors(model, outputs.extras):
            return model.forward_training(
                outputs.images, head_in, predictions, outputs.gt_instances
            )


def _retinanet_head_with_towers(head: RetinaNetHead, features: List[Tensor]):
    """``RetinaNetHead.forward`` (the same modules in the same order) that also returns the
    cls-tower output of each level, (N, C, H_l, W_l) after its last activation (HEAD's CKD
    reads it). Stored in ``DetectorOutputs.extras["cls_tower"]``."""
    logits, deltas, towers = [], [], []
    for x in features:
        t = head.cls_subnet(x)
        towers.append(t)
        logits.append(head.cls_score(t))
        deltas.append(head.bbox_pred(head.bbox_subnet(x)))
    return [logits, deltas], towers


@contextlib.contextmanager
def _recorded_label_anchors(model, store: dict):
    """Within the block, ``model.label_anchors`` returns ``store["label_anchors"]`` when
    present, else computes the targets and records them there. DenseDetector subclasses assign
    targets through ``label_anchors(anchors, gt_instances)`` in ``forward_training``."""
    original = model.label_anchors

    def label_anchors(*args, **kwargs):
        if "label_anchors" not in store:
            store["label_anchors"] = original(*args, **kwargs)
        return store["label_anchors"]

    model.label_anchors = label_anchors
    try:
        yield
    finally:
        del model.label_anchors


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

    def task_losses(
        self, model, outputs: DetectorOutputs, assignment: Optional[Assignment] = None
    ) -> Dict[str, Tensor]:
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
        "(see lgdkd/modeling/meta_arch/adapters.py)."
    )


def num_classes_of(model) -> int:
    """Foreground classes a detector predicts (-1 when it does not say)."""
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "num_classes"):
        return int(roi_heads.num_classes)
    return -1
