"""Deformable convolution for detectron2 without its compiled extension, via torchvision.

detectron2 v0.6 layout conventions (shared by torchvision's ``deform_conv2d``):

* ``offset``: (N, 2 * deformable_groups * kh * kw, Hout, Wout), for every deformable group and
  kernel position (row-major over kh, kw) a (dy, dx) pair;
* ``mask`` (modulated form): (N, deformable_groups * kh * kw, Hout, Wout);
* ``weight``: (Cout, Cin / groups, kh, kw).

Gradients come from torchvision's autograd kernels, on CPU and GPU alike.
"""

import sys

from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d


def _check(input, offset, weight, groups, deformable_groups, mask=None):
    if input.dim() != 4:
        raise ValueError(f"Expected 4D tensor as input, got {input.dim()}D tensor instead.")
    kh, kw = weight.shape[2:]
    if input.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"deform_conv: input has {input.shape[1]} channels but weight expects "
            f"{weight.shape[1]} x groups={groups}"
        )
    if offset.shape[1] != 2 * deformable_groups * kh * kw:
        raise ValueError(
            f"deform_conv: offset has {offset.shape[1]} channels, expected "
            f"2 * deformable_groups({deformable_groups}) * {kh} * {kw}"
        )
    if mask is not None and mask.shape[1] != deformable_groups * kh * kw:
        raise ValueError(
            f"modulated_deform_conv: mask has {mask.shape[1]} channels, expected "
            f"deformable_groups({deformable_groups}) * {kh} * {kw}"
        )


def deform_conv(
    input,
    offset,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
    im2col_step=64,
):
    """Same signature and result as ``detectron2.layers.deform_conv.deform_conv``."""
    _check(input, offset, weight, groups, deformable_groups)
    return deform_conv2d(
        input,
        offset,
        weight,
        None,
        stride=_pair(stride),
        padding=_pair(padding),
        dilation=_pair(dilation),
    )


def modulated_deform_conv(
    input,
    offset,
    mask,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
):
    """Same signature and result as ``detectron2.layers.deform_conv.modulated_deform_conv``."""
    _check(input, offset, weight, groups, deformable_groups, mask)
    return deform_conv2d(
        input,
        offset,
        weight,
        bias,
        stride=_pair(stride),
        padding=_pair(padding),
        dilation=_pair(dilation),
        mask=mask,
    )


def patch_detectron2_deform_conv(module):
    """Route ``detectron2.layers.deform_conv``'s functions to torchvision.

    Only when detectron2's ``_C`` is lgdkd's fallback: v0.6's autograd functions raise on CPU
    (and ignore ``groups`` in the CPU forward), and call compiled kernels on GPU.
    """
    ops = sys.modules.get("detectron2._C")
    if not getattr(ops, "LGDKD_FALLBACK", False):
        return
    module.deform_conv = deform_conv
    module.modulated_deform_conv = modulated_deform_conv
