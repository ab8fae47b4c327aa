"""detectron2's FPN on top of :class:`TimmBackbone`: ``build_timm_fpn_backbone``, P2-P6 (or
P3-P6...) with ``LastLevelMaxPool``, the Faster R-CNN layout of detectron2's
``build_resnet_fpn_backbone``. The P3-P7 builders are in :mod:`.top_blocks`.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from .timm_backbone import TimmBackbone

__all__ = ["build_timm_fpn_backbone"]


def _bottom_up(cfg, input_shape: ShapeSpec, required=()) -> TimmBackbone:
    bottom_up = TimmBackbone(cfg, input_shape)
    available = set(bottom_up.output_shape())
    needed = set(cfg.MODEL.FPN.IN_FEATURES) | set(required)
    if not needed <= available:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)} (and {list(required)} for "
            f"the top block) must be in MODEL.TIMM.OUT_FEATURES {list(cfg.MODEL.TIMM.OUT_FEATURES)}"
        )
    return bottom_up


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """timm bottom-up + FPN + max-pooled P6 (outputs p2..p6 for IN_FEATURES res2..res5)."""
    bottom_up = _bottom_up(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
