"""timm classification networks as detectron2 backbones.

Shape shorthand:
    N: images; H, W: padded input size (detectron2 pads to a multiple of ``size_divisibility``);
    C_k: channels of stage ``res_k``, read from timm's ``feature_info`` (never hard-coded).

``TimmBackbone`` maps an image batch (N, 3, H, W) to ``{"res2": (N, C_2, H/4, W/4), ...,
"res5": (N, C_5, H/32, W/32)}`` (the stages listed in MODEL.TIMM.OUT_FEATURES), taking each
``res_k`` from the last timm feature at reduction 2**k. It runs the timm model through timm's
``forward_intermediates`` (NCHW output for every family, Swin's NHWC included) after pruning
what the outputs do not need (classifier, final norm, stages after the last output).

Channel order: timm's weights expect RGB. The backbone knows INPUT.FORMAT and reverses the
channels itself when the images are BGR (detectron2's default), so a config cannot feed BGR to
RGB weights by mistake. PIXEL_MEAN/PIXEL_STD stay in INPUT.FORMAT order, as everywhere in
detectron2.
"""

import logging
from typing import Dict, List, Sequence

import numpy as np
import timm
import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .norms import NORMS, convert_norm, freeze_module, has_batch_norm, replace_submodule
from .pretrained import (
    IMAGENET_PIXEL_MEAN_RGB,
    IMAGENET_PIXEL_STD_RGB,
    OFFLINE_WEIGHTS,
    load_timm_state_dict,
    pretrained_state_dict,
    to_input_order,
)

__all__ = ["STAGE_STRIDES", "TimmBackbone", "build_timm_backbone", "timm_model"]

logger = logging.getLogger(__name__)

# detectron2's stage names and the reductions they stand for.
STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

# Constructor arguments that a timm model family needs to run inside a detector, keyed by the
# module that defines the family. Swin: accept any input size (attention masks are built per
# forward for the padded size) and keep 7x7 windows with shifts in every stage whatever the
# feature size, as Swin's detection models do; timm would otherwise shrink the window and drop
# the shift of stages whose feature map is <= 7 at the construction size (224).
_FAMILY_KWARGS = {
    "timm.models.swin_transformer": dict(strict_img_size=False, always_partition=True),
}


def timm_model(model_name: str, in_channels: int = 3) -> torch.nn.Module:
    """The full timm model (classifier included), randomly initialised, never downloaded,
    with the constructor arguments its family needs inside a detector (``_FAMILY_KWARGS``)."""
    module = timm.models.model_entrypoint(model_name).__module__
    kwargs = _FAMILY_KWARGS.get(module, {})
    return timm.create_model(model_name, pretrained=False, in_chans=in_channels, **kwargs)


def _stage_features(feature_info: Sequence[dict], model_name: str) -> Dict[str, int]:
    """``{"res2": i, ..., "res5": i}``: index in ``feature_info`` of each stage's output.

    When several features share a reduction, the last (deepest) one is the stage output.
    """
    index = {}
    for i, info in enumerate(feature_info):
        for name, stride in STAGE_STRIDES.items():
            if info["reduction"] == stride:
                index[name] = i
    if set(index) != set(STAGE_STRIDES):
        reductions = [info["reduction"] for info in feature_info]
        raise ValueError(
            f"timm model {model_name!r} has features at reductions {reductions}; a detectron2 "
            f"backbone needs one at each of {sorted(STAGE_STRIDES.values())}"
        )
    return index


def _stage_modules(
    model: torch.nn.Module, feature_info: Sequence[dict], stage_index: Dict[str, int]
) -> Dict[str, List[str]]:
    """Module paths making up ``stem``, ``res2`` .. ``res5`` of a timm model, for FREEZE_AT.

    The network is read as a sequence of units in registration order: top-level children,
    with the containers that hold feature modules (``blocks``, ``layers``) expanded into their
    items. Stage ``res_k`` is every unit after the previous stage up to its own feature module
    (EfficientNet: res2 = ``blocks.1``, res4 = ``blocks.3`` + ``blocks.4``). The stem is every
    unit before res2: up to the last feature at reduction 2 and up to the first unit of res2's
    container (EfficientNet: ``conv_stem``, ``bn1``, ``blocks.0``; Swin: ``patch_embed``;
    timm ResNet: ``conv1`` .. ``maxpool``). Units after res5 (head) belong to no stage.
    """
    containers = {info["module"].split(".")[0] for info in feature_info if "." in info["module"]}
    units = []
    for name, child in model.named_children():
        if name in containers:
            units += [f"{name}.{j}" for j in range(len(child))]
        else:
            units.append(name)
    position = {unit: i for i, unit in enumerate(units)}
    paths = [feature_info[stage_index[name]]["module"] for name in STAGE_STRIDES]
    if any(p not in position for p in paths):
        raise ValueError(
            f"cannot split {type(model).__name__} into stages for FREEZE_AT: its features are at "
            f"{paths}, expected top-level modules or items of a top-level container"
        )
    res2_container = paths[0].split(".")[0]
    start = max(
        [next(j for j, u in enumerate(units) if u.split(".")[0] == res2_container)]
        + [position[i["module"]] + 1 for i in feature_info if i["reduction"] < 4]
    )
    stages = {"stem": units[:start]}
    for name, path in zip(STAGE_STRIDES, paths):
        end = position[path]
        stages[name] = units[start : end + 1]
        start = end + 1
    return stages


class TimmBackbone(Backbone):
    """A timm network's stage outputs as a detectron2 backbone (see module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        model_name: str,
        out_features: Sequence[str],
        in_channels: int = 3,
        input_format: str = "RGB",
        pretrained: str = "",
        freeze_at: int = 0,
        norm: str = "BN",
    ):
        """
        Args:
            model_name: timm model name, e.g. "tf_efficientnet_lite0", "mobilenetv2_100",
                "swin_tiny_patch4_window7_224". Any timm model with ``forward_intermediates``
                and features at reductions 4, 8, 16 and 32 works.
            out_features: subset of "res2".."res5".
            in_channels: channels of the input images.
            input_format: channel order of the input, "RGB" or "BGR"; BGR is reversed to the
                RGB that timm weights expect.
            pretrained: "" (random init), "imagenet" (offline weights, see
                :mod:`.pretrained`) or a checkpoint path in timm's key format. Loaded strictly.
            freeze_at: 0 trains everything; k >= 1 freezes the stem and res2..res(k): no
                gradient, and their BatchNorms become frozen (statistics fixed).
            norm: "BN" keeps the network's own norm layers (BatchNorm for CNNs, LayerNorm for
                Swin); "FrozenBN", "SyncBN" or "GN" convert every BatchNorm (an error for a
                network that has none).
        """
        super().__init__()
        unknown = [f for f in out_features if f not in STAGE_STRIDES]
        if not out_features or unknown or len(set(out_features)) != len(out_features):
            raise ValueError(
                f"MODEL.TIMM.OUT_FEATURES must name some of res2..res5: {out_features}"
            )
        if input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"timm backbones take INPUT.FORMAT 'RGB' or 'BGR', not {input_format!r}"
            )
        if input_format == "BGR" and in_channels != 3:
            raise ValueError(f"INPUT.FORMAT 'BGR' needs 3 input channels, got {in_channels}")
        if norm not in NORMS:
            raise ValueError(f"MODEL.TIMM.NORM must be one of {NORMS}, got {norm!r}")
        if norm == "GN" and pretrained:
            raise ValueError(
                "MODEL.TIMM.NORM 'GN' replaces the BatchNorms whose statistics and affine "
                "parameters the pretrained weights need: use GN from scratch, or BN / FrozenBN / "
                "SyncBN with MODEL.TIMM.PRETRAINED"
            )
        if not 0 <= freeze_at <= 1 + len(STAGE_STRIDES):
            raise ValueError(f"MODEL.TIMM.FREEZE_AT must be in 0..5, got {freeze_at}")

        model = timm_model(model_name, in_channels)
        feature_info = list(model.feature_info)
        stage_index = _stage_features(feature_info, model_name)
        stage_modules = _stage_modules(model, feature_info, stage_index)
        full_shapes = {k: v.shape for k, v in model.state_dict().items()}

        self._out_features = sorted(out_features, key=STAGE_STRIDES.get)
        self._indices = [stage_index[f] for f in self._out_features]
        model.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)
        if pretrained:
            state = pretrained_state_dict(model_name, pretrained, full_shapes)
            droppable = set(full_shapes) - set(model.state_dict())
            source = "ImageNet weights" if pretrained == "imagenet" else pretrained
            load_timm_state_dict(model, state, droppable, f"{source} for {model_name}")
        if norm != "BN":
            if not has_batch_norm(model):
                raise ValueError(
                    f"MODEL.TIMM.NORM {norm!r}: {model_name} has no BatchNorm to convert "
                    "(use 'BN' to keep its own norm layers)"
                )
            model = convert_norm(model, norm)
        self.model = model

        self._stage_modules = stage_modules
        self._frozen_stages = ["stem", *STAGE_STRIDES][:freeze_at]
        for stage in self._frozen_stages:
            for path in stage_modules[stage]:
                if _has_submodule(self.model, path):  # stages after the last output are pruned
                    replace_submodule(self.model, path, freeze_module)
        self._reverse_channels = input_format == "BGR"
        self._out_feature_strides = {f: STAGE_STRIDES[f] for f in self._out_features}
        self._out_feature_channels = {
            f: feature_info[stage_index[f]]["num_chs"] for f in self._out_features
        }

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        t = cfg.MODEL.TIMM
        _check_pixel_stats(cfg, t.NAME, t.PRETRAINED)
        return {
            "model_name": t.NAME,
            "out_features": list(t.OUT_FEATURES),
            "in_channels": input_shape.channels,
            "input_format": cfg.INPUT.FORMAT,
            "pretrained": t.PRETRAINED,
            "freeze_at": t.FREEZE_AT,
            "norm": t.NORM,
        }

    @property
    def size_divisibility(self) -> int:
        """32: every stage then has an integer size. Swin pads each stage to a multiple of its
        7x7 window internally (zeros, as Swin's detection code does); inputs that are multiples
        of 224 need no such padding but cost more padding at the image level."""
        return 32

    def stage_modules(self, stage: str) -> List[torch.nn.Module]:
        """The modules of ``stage`` ("stem", "res2".."res5") that this backbone still holds."""
        paths = self._stage_modules[stage]
        return [self.model.get_submodule(p) for p in paths if _has_submodule(self.model, p)]

    def train(self, mode: bool = True) -> "TimmBackbone":
        """Frozen stages stay in eval mode, so that they compute a fixed function: no dropout
        or stochastic depth (Swin-T has drop-path 0.1) in frozen stages while training."""
        super().train(mode)
        for stage in self._frozen_stages:
            for module in self.stage_modules(stage):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, C_in, H, W) images normalised by PIXEL_MEAN/PIXEL_STD, in INPUT.FORMAT order.

        Returns:
            {name: (N, C_k, H / stride_k, W / stride_k)} for each name in out_features.
        """
        if self._reverse_channels:
            x = x.flip(1)
        feats = self.model.forward_intermediates(
            x, indices=self._indices, intermediates_only=True, stop_early=True
        )
        return dict(zip(self._out_features, feats))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(
                channels=self._out_feature_channels[f], stride=self._out_feature_strides[f]
            )
            for f in self._out_features
        }


def _has_submodule(root: torch.nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def _check_pixel_stats(cfg, model_name: str, pretrained: str) -> None:
    """Warn when MODEL.PIXEL_MEAN/PIXEL_STD do not match what the "imagenet" weights expect.

    Accepted: the weights' own scaling, or ImageNet mean/std, in INPUT.FORMAT order. Wrong
    scaling does not crash; it only makes the pretrained features useless, hence the warning.
    """
    if pretrained != "imagenet" or model_name not in OFFLINE_WEIGHTS:
        return
    fmt = cfg.INPUT.FORMAT
    if fmt not in ("RGB", "BGR"):
        return  # refused with a clear message by the constructor
    spec = OFFLINE_WEIGHTS[model_name]
    got = (tuple(cfg.MODEL.PIXEL_MEAN), tuple(cfg.MODEL.PIXEL_STD))
    accepted = [
        (to_input_order(spec.pixel_mean, fmt), to_input_order(spec.pixel_std, fmt)),
        (to_input_order(IMAGENET_PIXEL_MEAN_RGB, fmt), to_input_order(IMAGENET_PIXEL_STD_RGB, fmt)),
    ]
    if not any(np.allclose(got, ok, atol=1.0) for ok in accepted):
        logger.warning(
            f"MODEL.PIXEL_MEAN {list(got[0])} / PIXEL_STD {list(got[1])} do not match the "
            f"ImageNet weights of {model_name}: expected {list(accepted[0][0])} / "
            f"{list(accepted[0][1])} (INPUT.FORMAT {fmt})"
        )


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """A timm network (MODEL.TIMM.*) without FPN; outputs MODEL.TIMM.OUT_FEATURES."""
    return TimmBackbone(cfg, input_shape)
