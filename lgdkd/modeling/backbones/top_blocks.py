"""FPN top blocks producing P6/P7 from either C5 or P5, with or without a ReLU before P7, and
the yacs builders that use them.

detectron2's ``LastLevelP6P7`` computes P6 from its input (C5 in
``build_retinanet_resnet_fpn_backbone``) and applies a ReLU before P7. MMDetection's FPN, which
the GFocal, LD, PAA and LAD models were trained with, computes P6 from the FPN output P5
(``add_extra_convs='on_output'``) and P7 from P6 without a ReLU
(``relu_before_extra_convs=False``). A checkpoint converted from MMDetection, or a
reproduction of those papers' numbers, needs the latter.

MODEL.BACKBONE.BN_EVAL keeps the bottom-up BatchNorms in eval mode (:class:`BNEvalFPN`).

Keys (read by the two builders below):
    MODEL.FPN.TOP_BLOCK_IN: "res5" (C5, detectron2 RetinaNet) or "p5" (the FPN output; MMDetection
        and detectron2's FCOS).
    MODEL.FPN.TOP_BLOCK_RELU: ReLU between P6 and P7 (detectron2: True; MMDetection: False).
"""

import math

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from .timm_fpn import _bottom_up

__all__ = [
    "BNEvalFPN",
    "LastLevelP6P7Configurable",
    "build_resnet_fpn_p6p7_backbone",
    "build_timm_fpn_p6p7_backbone",
]


class LastLevelP6P7Configurable(nn.Module):
    """P6 = conv3x3/s2(x), P7 = conv3x3/s2(relu(P6) if ``relu`` else P6), where x is the
    feature named ``in_feature`` (a bottom-up stage such as "res5" or an FPN output such as
    "p5"). Convs are initialised like detectron2's top block (Caffe2 Xavier)."""

    def __init__(self, in_channels: int, out_channels: int, in_feature: str, relu: bool):
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.relu = relu
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in [self.p6, self.p7]:
            weight_init.c2_xavier_fill(module)

    def forward(self, x):
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6) if self.relu else p6)
        return [p6, p7]


def _top_block(cfg, bottom_up, out_channels: int) -> LastLevelP6P7Configurable:
    source = cfg.MODEL.FPN.TOP_BLOCK_IN
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    shapes = bottom_up.output_shape()
    if source == "p5":
        # the FPN names its outputs p<log2(stride)>: the coarsest one feeds P6
        top_stride = shapes[in_features[-1]].stride
        name, channels = "p{}".format(int(math.log2(top_stride))), out_channels
    elif source in shapes:
        name, channels = source, shapes[source].channels
    else:
        raise ValueError(
            f"MODEL.FPN.TOP_BLOCK_IN = {source!r}: use 'p5' (the FPN's coarsest output) or a "
            f"bottom-up feature of {sorted(shapes)}."
        )
    return LastLevelP6P7Configurable(
        channels, out_channels, in_feature=name, relu=cfg.MODEL.FPN.TOP_BLOCK_RELU
    )


class BNEvalFPN(FPN):
    """detectron2's FPN whose bottom-up BatchNorm layers stay in eval mode while the model
    trains: running statistics frozen, affine parameters trained (MMDetection's
    ``norm_eval=True`` with ``requires_grad=True``, the ResNet setting of its RetinaNet and
    Faster R-CNN configs). Same modules and state dict as FPN; MODEL.BACKBONE.BN_EVAL."""

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in self.bottom_up.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def _fpn(cfg, bottom_up) -> FPN:
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    cls = BNEvalFPN if cfg.MODEL.BACKBONE.BN_EVAL else FPN
    return cls(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=_top_block(cfg, bottom_up, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_p6p7_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN (P3-P7 for IN_FEATURES res3-res5) with the configurable P6/P7 top block."""
    return _fpn(cfg, build_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_timm_fpn_p6p7_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """timm bottom-up + FPN (P3-P7 for IN_FEATURES res3-res5) with the configurable top block."""
    required = () if cfg.MODEL.FPN.TOP_BLOCK_IN == "p5" else (cfg.MODEL.FPN.TOP_BLOCK_IN,)
    return _fpn(cfg, _bottom_up(cfg, input_shape, required=required))
