"""FPN top blocks producing P6/P7 from either C5 or P5, with or without a ReLU before P7, and
every P3-P7 backbone builder of the project (one FPN constructor, :func:`fpn_p6p7`).

detectron2's ``LastLevelP6P7`` computes P6 from its input (C5 in
``build_retinanet_resnet_fpn_backbone``) and applies a ReLU before P7. MMDetection's FPN, which
the GFocal, LD, PAA and LAD models were trained with, computes P6 from the FPN output P5
(``add_extra_convs='on_output'``) and P7 from P6 without a ReLU
(``relu_before_extra_convs=False``). A checkpoint converted from MMDetection, or a
reproduction of those papers' numbers, needs the latter.

MODEL.BACKBONE.BN_EVAL keeps the bottom-up BatchNorms in eval mode (:class:`BNEvalFPN`).

MODEL.BACKBONE.NAME (each registered in detectron2's BACKBONE_REGISTRY):
    build_resnet_fpn_p6p7_backbone     ResNet, P6/P7 as MODEL.FPN.TOP_BLOCK_IN / TOP_BLOCK_RELU say
    build_timm_fpn_p6p7_backbone       the same on a timm network
    build_timm_retinanet_fpn_backbone  timm, P6/P7 from C5 with the ReLU (detectron2 RetinaNet's
                                       layout, as build_retinanet_resnet_fpn_backbone)
    build_fcos_resnet_fpn_backbone     ResNet, P6/P7 from P5 with the ReLU (detectron2's FCOS
                                       LazyConfig; the FCOS journal version, arXiv:2006.09214,
                                       Sec. 2.2)

Keys read by the first two:
    MODEL.FPN.TOP_BLOCK_IN: "res5" (C5, detectron2 RetinaNet) or "p5" (the FPN output; MMDetection
        and detectron2's FCOS).
    MODEL.FPN.TOP_BLOCK_RELU: ReLU between P6 and P7 (detectron2: True; MMDetection: False).
With a ReLU before P7 the top block is detectron2's own ``LastLevelP6P7``; without it,
:class:`LastLevelP6P7Configurable` (same parameters and state-dict keys).
"""

import math

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from .timm_fpn import _bottom_up

__all__ = [
    "BNEvalFPN",
    "LastLevelP6P7Configurable",
    "build_fcos_resnet_fpn_backbone",
    "build_resnet_fpn_p6p7_backbone",
    "build_timm_fpn_p6p7_backbone",
    "build_timm_retinanet_fpn_backbone",
    "fpn_p6p7",
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


def _top_block(bottom_up, in_features, out_channels: int, source: str, relu: bool) -> nn.Module:
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
    if relu:
        # detectron2's own block computes exactly this (same parameters, init order, outputs);
        # using it keeps the module types of detectron2's RetinaNet / FCOS models
        return LastLevelP6P7(channels, out_channels, in_feature=name)
    return LastLevelP6P7Configurable(channels, out_channels, in_feature=name, relu=False)


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


def fpn_p6p7(cfg, bottom_up, top_block_in: str, relu: bool) -> FPN:
    """detectron2's FPN (:class:`BNEvalFPN` with MODEL.BACKBONE.BN_EVAL) on ``bottom_up`` with
    P6/P7 computed from ``top_block_in`` ("p5" or a bottom-up feature such as "res5"), a ReLU
    before P7 when ``relu``. Reads MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE}."""
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_features = cfg.MODEL.FPN.IN_FEATURES
    cls = BNEvalFPN if cfg.MODEL.BACKBONE.BN_EVAL else FPN
    return cls(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=_top_block(bottom_up, in_features, out_channels, top_block_in, relu),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def _configured(cfg, bottom_up) -> FPN:
    return fpn_p6p7(cfg, bottom_up, cfg.MODEL.FPN.TOP_BLOCK_IN, cfg.MODEL.FPN.TOP_BLOCK_RELU)


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_p6p7_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN (P3-P7 for IN_FEATURES res3-res5) with the configurable P6/P7 top block."""
    return _configured(cfg, build_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_timm_fpn_p6p7_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """timm bottom-up + FPN (P3-P7 for IN_FEATURES res3-res5) with the configurable top block."""
    required = () if cfg.MODEL.FPN.TOP_BLOCK_IN == "p5" else (cfg.MODEL.FPN.TOP_BLOCK_IN,)
    return _configured(cfg, _bottom_up(cfg, input_shape, required=required))


@BACKBONE_REGISTRY.register()
def build_timm_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """timm bottom-up + FPN + P6/P7 from C5 (outputs p3..p7 for IN_FEATURES res3..res5), as
    detectron2 v0.6's ``build_retinanet_resnet_fpn_backbone`` builds them on a ResNet."""
    return fpn_p6p7(cfg, _bottom_up(cfg, input_shape, required=("res5",)), "res5", relu=True)


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with two extra levels computed from the FPN's coarsest output.

    With MODEL.FPN.IN_FEATURES res3-res5 the outputs are P3-P7 and P6/P7 come from P5
    (MODEL.FPN.OUT_CHANNELS channels), where ``build_retinanet_resnet_fpn_backbone`` uses C5
    (2048 channels for R-50). That is detectron2's FCOS LazyConfig and the FCOS journal version
    (arXiv:2006.09214, Sec. 2.2). Reads MODEL.RESNETS.* and MODEL.FPN.*.
    """
    return fpn_p6p7(cfg, build_resnet_backbone(cfg, input_shape), "p5", relu=True)
