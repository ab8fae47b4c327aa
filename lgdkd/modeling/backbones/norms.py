"""Norm-layer conversions for timm convolutional networks.

timm's CNNs (EfficientNet, MobileNet, ...) use ``timm.layers.BatchNormAct2d``: a BatchNorm that
also applies the following activation (ReLU6, SiLU, ...). It subclasses ``nn.BatchNorm2d``, so
detectron2's ``FrozenBatchNorm2d.convert_frozen_batchnorm`` would replace it by a plain frozen
BN and silently drop the activation. The conversions here keep the activation: they use timm's
own ``freeze_batch_norm_2d`` / ``convert_sync_batchnorm`` and a GroupNorm conversion written for
``BatchNormAct2d``.
"""

from typing import Callable

import torch
from timm.layers import BatchNormAct2d, GroupNormAct, convert_sync_batchnorm, freeze_batch_norm_2d
from torch import nn

__all__ = [
    "NORMS",
    "convert_norm",
    "freeze_module",
    "gn_num_groups",
    "has_batch_norm",
    "replace_submodule",
]

# Accepted values of MODEL.TIMM.NORM.
NORMS = ("BN", "FrozenBN", "SyncBN", "GN")


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` contains a (possibly synchronised) BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def gn_num_groups(num_channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """Number of GroupNorm groups for ``num_channels``.

    detectron2 uses 32 groups, but mobile networks have widths such as 24, 40 or 112 that 32
    does not divide. This returns the largest power of two <= ``max_groups`` that divides
    ``num_channels`` while leaving at least ``min_group_size`` channels per group (1 group if
    none does): 16 -> 4, 24 -> 4, 40 -> 8, 96 -> 16, 112 -> 16, 320 -> 32.
    """
    groups = max_groups
    while groups > 1 and (num_channels % groups or num_channels // groups < min_group_size):
        groups //= 2
    return groups


def _to_group_norm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every BatchNorm replaced by a freshly initialised GroupNorm."""
    if isinstance(module, BatchNormAct2d):
        gn = GroupNormAct(module.num_features, num_groups=gn_num_groups(module.num_features))
        gn.act = module.act
        gn.drop = module.drop
        return gn
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.GroupNorm(gn_num_groups(module.num_features), module.num_features)
    for name, child in module.named_children():
        new_child = _to_group_norm(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


_CONVERTERS = {
    "FrozenBN": freeze_batch_norm_2d,
    "SyncBN": convert_sync_batchnorm,
    "GN": _to_group_norm,
}


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Convert the BatchNorm layers of ``module`` as MODEL.TIMM.NORM says.

    Args:
        module: a network whose BatchNorm layers are ``nn.BatchNorm2d`` or ``BatchNormAct2d``.
        norm: "BN" (keep), "FrozenBN" (statistics and affine fixed: buffers, not parameters),
            "SyncBN" (statistics synchronised across processes) or "GN" (GroupNorm, new affine
            parameters; see :func:`gn_num_groups`).

    Returns:
        The converted module: ``module`` itself, changed in place, unless ``module`` is itself a
        BatchNorm layer (then a new module is returned, as with torch's converters).
    """
    if norm not in NORMS:
        raise ValueError(f"MODEL.TIMM.NORM must be one of {NORMS}, got {norm!r}")
    if norm == "BN":
        return module
    return _CONVERTERS[norm](module)


def replace_submodule(root: nn.Module, path: str, fn: Callable[[nn.Module], nn.Module]) -> None:
    """Apply ``fn`` to ``root``'s sub-module at dotted ``path``; put the result in its place.

    Needed because the converters above return a new module when given a BatchNorm layer itself
    (e.g. the stem's ``bn1``), which must then be set on the parent.
    """
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    child = getattr(parent, name)
    new_child = fn(child)
    if new_child is not child:
        parent.add_module(name, new_child)


@torch.no_grad()
def freeze_module(module: nn.Module) -> nn.Module:
    """Freeze ``module``: no parameter gets a gradient and BatchNorm statistics stay fixed.

    Returns the converted module (a new one if ``module`` is itself a BatchNorm layer).
    """
    for p in module.parameters():
        p.requires_grad_(False)
    return freeze_batch_norm_2d(module)
