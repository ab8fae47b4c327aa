"""HEAD's assistant: the second stage of a Faster R-CNN on the student's FPN, with the
activations of its box head, and its initialisation from a teacher's RoI head."""

import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.roi_heads import StandardROIHeads
from detectron2.structures import Instances
from torch import Tensor, nn

from .proposals import gt_with_markers

__all__ = ["HEADAssistant", "box_head_activations", "transfer_weights", "activation_shapes"]

logger = logging.getLogger(__name__)


def box_head_activations(
    head: nn.Module, x: Tensor, names: Sequence[str]
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Run a ``FastRCNNConvFCHead`` layer by layer; return its output and, for each name in
    ``names``, that layer's output after its activation: ``fcK`` -> after ``fc_reluK``,
    ``convK`` -> the conv (norm and ReLU are inside detectron2's Conv2d)."""
    want = set(names)
    acts = {}
    for name, layer in head.named_children():
        x = layer(x)
        key = name.replace("fc_relu", "fc") if name.startswith("fc_relu") else name
        if key in want and (name.startswith("fc_relu") or name.startswith("conv")):
            acts[key] = x
    missing = want - set(acts)
    if missing:
        raise KeyError(
            f"Box head has no activation {sorted(missing)}; its layers are "
            f"{[n for n, _ in head.named_children()]}."
        )
    return x, acts


class HEADAssistant(StandardROIHeads):
    """The assistant: a Faster R-CNN second stage (detectron2's ``StandardROIHeads`` with a
    ``FastRCNNConvFCHead`` and ``FastRCNNOutputLayers``) on the student's FPN levels.

    RoIs are mapped to levels by MMDetection's rule, k = floor(log2(sqrt(wh) / 56)) clamped
    to the listed levels (k = 0: the first). With detectron2's ROIPooler that is
    ``canonical_level = log2(first stride) + 2`` at canonical size 224: the teacher's p2-p5
    use the default (224, 4) and the student's p3-p6 use (224, 5), so a RoI lands on the
    same *relative* level in both.
    """

    @classmethod
    def build(cls, cfg, input_shape: Dict[str, ShapeSpec], num_classes: int) -> "HEADAssistant":
        a = cfg.MODEL.DISTILL.HEAD.ASSIST
        in_features = list(a.IN_FEATURES)
        for f in in_features:
            if f not in input_shape:
                raise ValueError(
                    f"MODEL.DISTILL.HEAD.ASSIST.IN_FEATURES: the student has no feature {f!r} "
                    f"(it has {sorted(input_shape)})."
                )
        strides = [input_shape[f].stride for f in in_features]
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"Assistant levels {in_features} have different channels.")
        levels = [math.log2(s) for s in strides]
        if any(lv != int(lv) for lv in levels) or levels != list(
            range(int(levels[0]), int(levels[0]) + len(levels))
        ):
            raise ValueError(
                f"MODEL.DISTILL.HEAD.ASSIST.IN_FEATURES {in_features} must be consecutive "
                f"power-of-2 strides, got {strides}."
            )
        pooler = ROIPooler(
            output_size=a.POOLER_RESOLUTION,
            scales=tuple(1.0 / s for s in strides),
            sampling_ratio=a.POOLER_SAMPLING_RATIO,
            pooler_type=a.POOLER_TYPE,
            canonical_box_size=224,
            canonical_level=int(levels[0]) + 2,
        )
        c = channels.pop()
        box_head = FastRCNNConvFCHead(
            ShapeSpec(channels=c, height=a.POOLER_RESOLUTION, width=a.POOLER_RESOLUTION),
            conv_dims=[a.CONV_DIM] * a.NUM_CONV,
            fc_dims=[a.FC_DIM] * a.NUM_FC,
            conv_norm=a.NORM,
        )
        predictor = FastRCNNOutputLayers(
            box_head.output_shape,
            box2box_transform=Box2BoxTransform(weights=tuple(a.BBOX_REG_WEIGHTS)),
            num_classes=num_classes,
            cls_agnostic_bbox_reg=a.CLS_AGNOSTIC_BBOX_REG,
            smooth_l1_beta=a.SMOOTH_L1_BETA,
            loss_weight={"loss_cls": a.CLS_WEIGHT, "loss_box_reg": a.BOX_WEIGHT},
        )
        return cls(
            box_in_features=in_features,
            box_pooler=pooler,
            box_head=box_head,
            box_predictor=predictor,
            num_classes=num_classes,
            batch_size_per_image=a.BATCH_SIZE_PER_IMAGE,
            positive_fraction=a.POSITIVE_FRACTION,
            proposal_matcher=Matcher([a.IOU_THRESHOLD], [0, 1], allow_low_quality_matches=False),
            proposal_append_gt=a.APPEND_GT,
        )

    def sample(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """Label and sample the proposals (ground-truth rows appended with ``anchor_pos``
        level -1); per image the positives first, then the negatives."""
        return self.label_and_sample_proposals(proposals, gt_with_markers(targets))

    def run(
        self, features: Dict[str, Tensor], sampled: List[Instances], names: Sequence[str]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Box head on the sampled RoIs: (losses ``loss_cls``/``loss_box_reg``, activations
        of ``names``). With no RoI at all the losses are 0 with a graph to the head."""
        x = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in sampled]
        )
        x, acts = box_head_activations(self.box_head, x, names)
        predictions = self.box_predictor(x)
        if x.shape[0] == 0:
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return {"loss_cls": zero, "loss_box_reg": zero}, acts
        return self.box_predictor.losses(predictions, sampled), acts


def transfer_weights(assistant: HEADAssistant, teacher_roi_heads) -> None:
    """Copy the teacher's box head and predictor into the assistant (the official weight
    transfer: a copy, not shared). Every tensor must exist in the teacher with the same
    shape; otherwise the error names them (e.g. the first conv of a conv head when the FPN
    widths differ)."""
    bad, pairs = [], []
    for part in ("box_head", "box_predictor"):
        src = getattr(teacher_roi_heads, part).state_dict()
        for k, v in getattr(assistant, part).state_dict().items():
            if k not in src or src[k].shape != v.shape:
                got = tuple(src[k].shape) if k in src else "missing"
                bad.append(f"{part}.{k}: assistant {tuple(v.shape)}, teacher {got}")
            else:
                pairs.append((v, src[k]))
    if bad:
        raise ValueError(
            "MODEL.DISTILL.HEAD.ASSIST.INIT_FROM_TEACHER: the assistant's RoI head does not "
            "match the teacher's (" + "; ".join(bad) + "). Make MODEL.DISTILL.HEAD.ASSIST "
            "(NUM_CONV, CONV_DIM, NUM_FC, FC_DIM, NORM, POOLER_RESOLUTION) equal the teacher's "
            "ROI_BOX_HEAD and its FPN width the student's, or set INIT_FROM_TEACHER False."
        )
    with torch.no_grad():
        for dst, src in pairs:
            dst.copy_(src)
    logger.info(f"HEAD assistant initialised from the teacher's RoI head ({len(pairs)} tensors)")


@torch.no_grad()
def activation_shapes(
    head: FastRCNNConvFCHead, in_shape: Tuple[int, int, int], names
) -> Dict[str, Tuple[int, ...]]:
    """Per-RoI shape of each named activation of ``head`` for a pooled (C, R, R) input (one
    dry run on one zero RoI, in eval mode so that no norm statistic moves)."""
    p = next(head.parameters())
    was_training = head.training
    head.eval()
    try:
        _, acts = box_head_activations(head, p.new_zeros((1, *in_shape)), names)
    finally:
        head.train(was_training)
    return {k: tuple(v.shape[1:]) for k, v in acts.items()}
