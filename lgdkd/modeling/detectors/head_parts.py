"""Parts of the shared dense heads of GFL and PAA (MMDetection's GFLHead / PAAHead layout):
the per-level scale, the conv towers and their N(0, 0.01) initialisation, the checks of the
head's levels, and the aligned IoU of their quality targets."""

from typing import List

import torch
from detectron2.layers import ShapeSpec, get_norm
from torch import Tensor, nn

__all__ = [
    "Scale",
    "aligned_iou",
    "check_head_features",
    "conv_tower",
    "init_convs_normal",
    "shared_head_channels",
]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per level)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return x * self.scale


def shared_head_channels(input_shape: List[ShapeSpec], head: str) -> int:
    """The one channel count of the levels a shared head runs on."""
    channels = sorted({s.channels for s in input_shape})
    if len(channels) != 1:
        raise ValueError(f"{head} shares its towers across levels; the levels have {channels}")
    return channels[0]


def conv_tower(channels: int, num_convs: int, norm: str, bias: bool) -> nn.Sequential:
    """num_convs x [conv3x3 (bias as given), norm (if any), ReLU], PyTorch's default init
    (see :func:`init_convs_normal`)."""
    layers = []
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
            *([get_norm(norm, channels)] if norm else []),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


def init_convs_normal(*modules: nn.Module) -> None:
    """Every Conv2d inside ``modules``: weights N(0, 0.01), bias 0 (in module order)."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def check_head_features(cfg, key: str, features: List[str], shapes) -> None:
    """Refuse head levels (config ``key``) the backbone does not produce."""
    missing = [f for f in features if f not in shapes]
    if missing:
        raise ValueError(
            f"{key} {missing} are not outputs of the backbone {cfg.MODEL.BACKBONE.NAME} "
            f"(it has {sorted(shapes)})"
        )


def aligned_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row i of ``a`` with row i of ``b`` (both (P, 4) XYXY) -> (P,)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)
