"""FCOS from a yacs config, registered in detectron2's ``META_ARCH_REGISTRY`` as ``"FCOS"``.

detectron2 v0.6 ships ``detectron2.modeling.meta_arch.fcos.FCOS`` (a ``DenseDetector``) but builds
it only from LazyConfig. :class:`FCOS` here is that class with a ``from_config`` reading
``MODEL.FCOS.*`` (see ``_add_fcos_config`` in lgdkd/config.py), so it is an ordinary yacs
meta-architecture; the network, losses and outputs are detectron2's. Defaults plus
configs/Base-FCOS.yaml reproduce detectron2's ``COCO-Detection/fcos_R_50_FPN_1x.py``.

That LazyConfig computes P6/P7 from the FPN output P5 (256 channels), not from C5 as
``build_retinanet_resnet_fpn_backbone`` does; :func:`build_fcos_resnet_fpn_backbone` is the yacs
builder of that backbone.

Shape shorthand: N images, L levels, R = sum_l Hl * Wl locations (one anchor point each),
K = MODEL.FCOS.NUM_CLASSES.
"""

import math
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _DetectronFCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Boxes, Instances

__all__ = ["FCOS", "build_fcos_head", "build_fcos_resnet_fpn_backbone"]


@META_ARCH_REGISTRY.register()
class FCOS(_DetectronFCOS):
    """detectron2's FCOS, constructible from a yacs config.

    Training: ``model(batched_inputs)`` returns ``{"loss_fcos_cls", "loss_fcos_loc",
    "loss_fcos_ctr"}``, each normalised by an EMA of the number of positive locations.
    Inference: ``[{"instances": Instances}]`` with ``pred_boxes``, ``scores`` (sqrt of class
    probability times centerness) and ``pred_classes`` in [0, K).

    One fix over v0.6: an image without ground-truth boxes (a negative image, or one whose
    boxes were all cropped away) makes v0.6's anchor matching fail (a max over an empty
    dimension); here its locations are all background, as in detectron2's RetinaNet.
    """

    @configurable
    def __init__(self, **kwargs):
        """Keyword arguments of ``detectron2.modeling.meta_arch.fcos.FCOS``: backbone, head,
        head_in_features, num_classes, center_sampling_radius, focal_loss_alpha/gamma,
        test_score_thresh, test_topk_candidates, test_nms_thresh, max_detections_per_image,
        pixel_mean, pixel_std (and box2box_transform, left to its default)."""
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        f = cfg.MODEL.FCOS
        shapes = backbone.output_shape()
        missing = [name for name in f.IN_FEATURES if name not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES {missing} are not outputs of the backbone "
                f"{cfg.MODEL.BACKBONE.NAME} (it has {sorted(shapes)})"
            )
        return {
            "backbone": backbone,
            "head": build_fcos_head(cfg, [shapes[name] for name in f.IN_FEATURES]),
            "head_in_features": list(f.IN_FEATURES),
            "num_classes": f.NUM_CLASSES,
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": f.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": f.FOCAL_LOSS_GAMMA,
            "test_score_thresh": f.SCORE_THRESH_TEST,
            "test_topk_candidates": f.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": f.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @torch.no_grad()
    def match_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Matched GT index per location, (R,) int64 per image, -1 for background.

        Images with boxes go through detectron2's rule (centre sampling, inside the box,
        per-level size range, smallest box wins); images without boxes get -1 everywhere.
        """
        with_boxes = [gt for gt in gt_instances if len(gt) > 0]
        matched = iter(super().match_anchors(anchors, with_boxes) if with_boxes else [])
        num_locations = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        return [
            (
                next(matched)
                if len(gt) > 0
                else torch.full((num_locations,), -1, dtype=torch.int64, device=device)
            )
            for gt in gt_instances
        ]

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Per image: class per location (R,) int64, K for background, and matched boxes (R, 4).

        Images with boxes are labelled by detectron2. For an image without boxes every location
        is background and its "matched boxes" are the location boxes themselves: never used as
        regression targets (no positives), they keep the centerness targets finite.
        """
        with_boxes = [gt for gt in gt_instances if len(gt) > 0]
        labels, boxes = super().label_anchors(anchors, with_boxes) if with_boxes else ([], [])
        labels, boxes = iter(labels), iter(boxes)
        all_anchors = Boxes.cat(anchors)
        background = torch.full(
            (len(all_anchors),), self.num_classes, dtype=torch.int64, device=all_anchors.device
        )
        out_labels, out_boxes = [], []
        for gt in gt_instances:
            out_labels.append(next(labels) if len(gt) > 0 else background.clone())
            out_boxes.append(next(boxes) if len(gt) > 0 else all_anchors.clone())
        return out_labels, out_boxes


def build_fcos_head(cfg, input_shapes: List[ShapeSpec]) -> FCOSHead:
    """``FCOSHead`` for feature maps of ``input_shapes`` (one per level, equal channels).

    The towers are shared across levels, so every level must have the same channel count;
    each tower has MODEL.FCOS.NUM_CONVS 3x3 convs of that width.
    """
    f = cfg.MODEL.FCOS
    channels = sorted({s.channels for s in input_shapes})
    if len(channels) != 1:
        raise ValueError(
            f"FCOSHead shares its towers across levels, but MODEL.FCOS.IN_FEATURES "
            f"{list(f.IN_FEATURES)} have channel counts {channels}"
        )
    if f.NUM_CONVS < 1:
        raise ValueError(f"MODEL.FCOS.NUM_CONVS must be >= 1, got {f.NUM_CONVS}")
    return FCOSHead(
        input_shape=input_shapes,
        conv_dims=[channels[0]] * f.NUM_CONVS,
        num_classes=f.NUM_CLASSES,
        norm=f.HEAD_NORM,
        prior_prob=f.PRIOR_PROB,
    )


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with two extra levels computed from the FPN's coarsest output.

    With MODEL.FPN.IN_FEATURES res3-res5 the outputs are P3-P7 and P6/P7 come from P5
    (MODEL.FPN.OUT_CHANNELS channels), where ``build_retinanet_resnet_fpn_backbone`` uses C5
    (2048 channels for R-50). That is detectron2's FCOS LazyConfig and the FCOS journal version
    (arXiv:2006.09214, Sec. 2.2). Reads MODEL.RESNETS.* and
    MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE}.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    # the FPN names its outputs p<log2(stride)>: the coarsest one is the input of P6
    top_stride = bottom_up.output_shape()[in_features[-1]].stride
    top_level = "p{}".format(int(math.log2(top_stride)))
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature=top_level),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
