"""Tests of lgdkd.compat, the layer that lets detectron2 v0.6 run without its compiled ``_C``.

What is checked, and against what:

* deformable convolution (plain and modulated, forward and every gradient) against
  :func:`reference_deform_conv`, an independent plain-PyTorch implementation written from the
  definition (bilinear sampling with zero padding, per kernel position and deformable group),
  through every path a user hits: detectron2's ``DeformConv`` / ``ModulatedDeformConv`` modules
  and the ``detectron2._C`` functions called with the arguments detectron2's CUDA path passes;
  plus a deformable ResNet built from a yacs config;
* imports in fresh interpreters, in several orders, with and without the ``.pth`` hook;
* the hook stays inert when a compiled ``_C`` is found;
* COCO AP through detectron2's ``COCOEvaluator`` (with the replaced ``COCOeval_opt``) equals
  pycocotools' ``COCOeval`` on the same detections;
* rotated-box ops fail with a clear ``NotImplementedError``.

Tests that assume the pure-Python installation (fallback ops in use) are skipped when
detectron2's compiled extension is present.
"""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from lgdkd.compat import compat_status, using_fallback_ops

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

requires_fallback = pytest.mark.skipif(
    not using_fallback_ops(), reason="detectron2's compiled _C is installed: no fallback to test"
)


# ---------------------------------------------------------------------------------------------
# Reference deformable convolution
# ---------------------------------------------------------------------------------------------
def _bilinear_zero_padded(x, py, px):
    """Sample ``x`` at real-valued positions, bilinearly, with zeros outside the image.

    Args:
        x: (N, D, Cd, H, W) input, split into D deformable groups of Cd channels.
        py, px: (N, D, P) row and column of each sampling point (one set per group).

    Returns:
        (N, D, Cd, P). The four integer neighbours of a point are weighted by
        (1 - |py - row|) * (1 - |px - col|); a neighbour outside [0, H) x [0, W) contributes 0.
        ``floor`` has zero gradient, so autograd gives the derivative of that expression
        (one-sided at integer positions, where bilinear interpolation has a kink).
    """
    n, d, cd, h, w = x.shape
    flat = x.reshape(n, d, cd, h * w)
    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0
    out = 0
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long()
            values = torch.gather(flat, 3, index[:, :, None, :].expand(n, d, cd, index.shape[-1]))
            out = out + values * (wy * wx * inside.to(x.dtype))[:, :, None, :]
    return out


def reference_deform_conv(
    x,
    offset,
    weight,
    bias=None,
    mask=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
):
    """Deformable convolution (DCNv1; DCNv2 when ``mask`` is given) from its definition.

    Output at (n, o, ho, wo) is
    ``bias[o] + sum_{c, i, j} weight[o, c, i, j] * m * x[n, c](p0 + pn + delta)`` with
    ``p0 = (ho * sh - ph, wo * sw - pw)``, ``pn = (i * dh, j * dw)``, ``delta`` the learned
    offset and ``m`` the mask (1 for DCNv1) of kernel position (i, j) and the deformable group
    of channel c; ``x[n, c](p)`` is bilinear sampling with zero padding.

    Layout (that of detectron2's CUDA kernel ``deformable_im2col_gpu_kernel``, which reads
    ``offset_h`` at channel ``2 * (i * kw + j)`` and ``offset_w`` at ``2 * (i * kw + j) + 1`` of
    each group's block, and the mask at ``i * kw + j``; torchvision's ``deform_conv2d`` documents
    the same):

    * x: (N, C, H, W); channels split into ``deformable_groups`` contiguous blocks for the
      offsets and into ``groups`` contiguous blocks for the weights;
    * offset: (N, deformable_groups * kh * kw * 2, Ho, Wo): per group, per kernel position in
      row-major order, a (dy, dx) pair;
    * mask: (N, deformable_groups * kh * kw, Ho, Wo);
    * weight: (Cout, C / groups, kh, kw); bias: (Cout,).

    Written with gather and einsum only, independent of torchvision and ``grid_sample``.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    cout, cpg, kh, kw = weight.shape
    dg, k = deformable_groups, kh * kw
    assert cpg * groups == c and c % dg == 0
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    assert offset.shape == (n, dg * k * 2, ho, wo), offset.shape

    off = offset.reshape(n, dg, kh, kw, 2, ho, wo)
    rows = torch.arange(ho, dtype=x.dtype) * sh - ph
    cols = torch.arange(wo, dtype=x.dtype) * sw - pw
    krows = torch.arange(kh, dtype=x.dtype) * dh
    kcols = torch.arange(kw, dtype=x.dtype) * dw
    py = krows[:, None, None, None] + rows[None, None, :, None] + off[:, :, :, :, 0]
    px = kcols[None, :, None, None] + cols[None, None, None, :] + off[:, :, :, :, 1]
    sampled = _bilinear_zero_padded(
        x.reshape(n, dg, c // dg, h, w), py.reshape(n, dg, -1), px.reshape(n, dg, -1)
    ).reshape(n, dg, c // dg, k, ho * wo)
    if mask is not None:
        assert mask.shape == (n, dg * k, ho, wo), mask.shape
        sampled = sampled * mask.reshape(n, dg, 1, k, ho * wo)
    columns = sampled.reshape(n, groups, cpg, k, ho * wo)
    out = torch.einsum("ngckl,gock->ngol", columns, weight.reshape(groups, -1, cpg, k))
    out = out.reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


def test_reference_matches_conv2d_and_hand_values():
    """The reference itself: zero offsets give conv2d; one sample checked by hand."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 6, generator=g, dtype=torch.float64)
    wgt = torch.randn(6, 2, 3, 2, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    conv = F.conv2d(x, wgt, b, stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2)
    offset = torch.zeros(2, 2 * 2 * 6, *conv.shape[2:], dtype=torch.float64)
    ref = reference_deform_conv(x, offset, wgt, b, None, (2, 1), (1, 2), (2, 1), 2, 2)
    torch.testing.assert_close(ref, conv, rtol=0, atol=1e-12)

    # x[r, c] = 4 r + c is reproduced exactly by bilinear interpolation inside the image;
    # offsets are (dy, dx): (0.5, 0.25) samples 4 * 0.5 + 0.25 (swapped it would be 1.5).
    img = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4)
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    off = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    off[0, :, 0, 0] = torch.tensor([0.5, 0.25])
    off[0, :, 0, 1] = torch.tensor([2.5, 0.0])  # half below the last row: 0.5 * x[2, 1]
    off[0, :, 0, 2] = torch.tensor([-1.0, 0.0])  # exactly one row above the image: 0
    out = reference_deform_conv(img, off, one)
    assert out[0, 0, 0, :3].tolist() == [2.25, 4.5, 0.0]


# ---------------------------------------------------------------------------------------------
# Deformable convolution: implementation vs reference
# ---------------------------------------------------------------------------------------------
# kernel, stride, padding, dilation, groups, deformable_groups. Tuples (non-square) only for
# DeformConv: ModulatedDeformConv keeps stride/padding/dilation as ints, as in detectron2.
CONV_CASES = {
    "k3": ((3, 3), 1, 1, 1, 1, 1),
    "k3_stride2": ((3, 3), 2, 1, 1, 1, 1),
    "k3_pad2_dil2": ((3, 3), 1, 2, 2, 1, 1),
    "k3_groups2": ((3, 3), 1, 1, 1, 2, 1),
    "k3_dgroups2": ((3, 3), 1, 1, 1, 1, 2),
    "k3_all": ((3, 3), 2, 2, 2, 2, 2),
    "k3x2": ((3, 2), 1, 1, 1, 2, 2),
    "k2x3_tuples": ((2, 3), (2, 1), (0, 1), (1, 2), 2, 2),
}
IN_SHAPE = (2, 4, 7, 6)  # N, C, H, W
OUT_CHANNELS = 6


def _out_hw(kernel, stride, padding, dilation):
    _, _, h, w = IN_SHAPE
    return tuple(
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip((h, w), kernel, _pair(stride), _pair(padding), _pair(dilation))
    )


def _make_inputs(case, modulated, integer_offsets=False, with_bias=True, seed=0):
    """float64 inputs for one case; offsets sample inside, across the border and outside.

    With ``integer_offsets=False`` every offset has a fractional part in [0.1, 0.9], so no
    sampling point (integer base + offset) lies on a bilinear kink. With True, every offset
    is an integer: every point lands exactly on a pixel or on an integer outside the image
    (including the -1 and H lines where the zero padding starts).
    """
    kernel, stride, padding, dilation, groups, dgroups = case
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = IN_SHAPE
    ho, wo = _out_hw(kernel, stride, padding, dilation)
    k = kernel[0] * kernel[1]
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    whole = torch.randint(-h, h + 1, (n, 2 * dgroups * k, ho, wo), generator=g).double()
    if integer_offsets:
        offset = whole
    else:
        offset = whole + 0.1 + 0.8 * torch.rand(whole.shape, generator=g, dtype=torch.float64)
    weight = torch.randn(OUT_CHANNELS, c // groups, *kernel, generator=g, dtype=torch.float64)
    mask = bias = None
    if modulated:
        mask = torch.rand(n, dgroups * k, ho, wo, generator=g, dtype=torch.float64)
        if with_bias:
            bias = torch.randn(OUT_CHANNELS, generator=g, dtype=torch.float64)
    grad_out = torch.randn(n, OUT_CHANNELS, ho, wo, generator=g, dtype=torch.float64)
    return dict(x=x, offset=offset, weight=weight, mask=mask, bias=bias, grad_out=grad_out)


def _sampling_coverage(case, offset):
    """Fractions of sampling points (inside, straddling the border, fully outside)."""
    kernel, stride, padding, dilation, _, _ = case
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, _, h, w = IN_SHAPE
    ho, wo = offset.shape[2:]
    off = offset.reshape(n, -1, kernel[0], kernel[1], 2, ho, wo)
    py = (
        (torch.arange(kernel[0]) * dh)[:, None, None, None]
        + (torch.arange(ho) * sh - ph)[None, None, :, None]
        + off[..., 0, :, :]
    )
    px = (
        (torch.arange(kernel[1]) * dw)[None, :, None, None]
        + (torch.arange(wo) * sw - pw)[None, None, None, :]
        + off[..., 1, :, :]
    )
    inside = (py >= 0) & (py <= h - 1) & (px >= 0) & (px <= w - 1)
    outside = (py <= -1) | (py >= h) | (px <= -1) | (px >= w)
    return (
        inside.double().mean().item(),
        (~inside & ~outside).double().mean().item(),
        (outside.double().mean().item()),
    )


def _reference_with_grads(case, t):
    """Reference output and autograd gradients for the tensors of ``t`` that are given."""
    kernel, stride, padding, dilation, groups, dgroups = case
    names = [k for k in ("x", "offset", "weight", "mask", "bias") if t[k] is not None]
    leaves = {k: t[k].clone().requires_grad_(True) for k in names}
    full = {k: leaves.get(k) for k in ("x", "offset", "weight", "mask", "bias")}
    out = reference_deform_conv(
        full["x"],
        full["offset"],
        full["weight"],
        full["bias"],
        full["mask"],
        stride,
        padding,
        dilation,
        groups,
        dgroups,
    )
    grads = torch.autograd.grad(out, [leaves[k] for k in names], t["grad_out"])
    return out.detach(), dict(zip(names, grads))


def _through_modules(case, t):
    """detectron2.layers.DeformConv / ModulatedDeformConv on CPU, gradients by autograd."""
    from detectron2.layers import DeformConv, ModulatedDeformConv

    kernel, stride, padding, dilation, groups, dgroups = case
    c = IN_SHAPE[1]
    if t["mask"] is None:
        layer = DeformConv(c, OUT_CHANNELS, kernel, stride, padding, dilation, groups, dgroups)
    else:
        layer = ModulatedDeformConv(
            c,
            OUT_CHANNELS,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            dgroups,
            bias=t["bias"] is not None,
        )
    layer = layer.double()
    with torch.no_grad():
        layer.weight.copy_(t["weight"])
        if t["bias"] is not None:
            layer.bias.copy_(t["bias"])
    x = t["x"].clone().requires_grad_(True)
    offset = t["offset"].clone().requires_grad_(True)
    if t["mask"] is None:
        out = layer(x, offset)
    else:
        mask = t["mask"].clone().requires_grad_(True)
        out = layer(x, offset, mask)
    out.backward(t["grad_out"])
    grads = {"x": x.grad, "offset": offset.grad, "weight": layer.weight.grad}
    if t["mask"] is not None:
        grads["mask"] = mask.grad
    if t["bias"] is not None:
        grads["bias"] = layer.bias.grad
    return out.detach(), grads


def _through_c_functions(case, t):
    """``detectron2._C`` functions called with the arguments detectron2's CUDA path passes.

    Mirrors ``_DeformConv.forward/backward`` and ``_ModulatedDeformConv.forward/backward`` of
    detectron2/layers/deform_conv.py: preallocated outputs, empty column/ones buffers, kernel
    sizes and strides as (w, h) for the plain op and (h, w) for the modulated one, gradients
    written into zero tensors, ``scale=1`` for the filter gradient.
    """
    from detectron2 import _C

    kernel, stride, padding, dilation, groups, dgroups = case
    x, offset, weight, mask, bias, grad_out = (
        t[k] for k in ("x", "offset", "weight", "mask", "bias", "grad_out")
    )
    out = x.new_empty(grad_out.shape)
    columns, ones = x.new_empty(0), x.new_empty(0)
    if mask is None:
        (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
        geometry = (weight.size(3), weight.size(2), sw, sh, pw, ph, dw, dh)
        step = x.shape[0]
        _C.deform_conv_forward(
            x, weight, offset, out, columns, ones, *geometry, groups, dgroups, step
        )
        grad_x, grad_offset, grad_weight = (torch.zeros_like(v) for v in (x, offset, weight))
        _C.deform_conv_backward_input(
            x,
            offset,
            grad_out,
            grad_x,
            grad_offset,
            weight,
            columns,
            *geometry,
            groups,
            dgroups,
            step,
        )
        _C.deform_conv_backward_filter(
            x, offset, grad_out, grad_weight, columns, ones, *geometry, groups, dgroups, 1, step
        )
        return out, {"x": grad_x, "offset": grad_offset, "weight": grad_weight}

    with_bias = bias is not None
    if not with_bias:
        bias = x.new_empty(1)  # detectron2 passes an uninitialised placeholder
    geometry = (weight.shape[2], weight.shape[3], stride, stride, padding, padding)
    geometry += (dilation, dilation, groups, dgroups, with_bias)
    _C.modulated_deform_conv_forward(x, weight, bias, columns, offset, mask, out, ones, *geometry)
    grads = {k: torch.zeros_like(v) for k, v in dict(x=x, weight=weight, offset=offset).items()}
    grads.update(bias=torch.zeros_like(bias), mask=torch.zeros_like(mask))
    _C.modulated_deform_conv_backward(
        x,
        weight,
        bias,
        columns,
        offset,
        mask,
        ones,
        grads["x"],
        grads["weight"],
        grads["bias"],
        grads["offset"],
        grads["mask"],
        grad_out,
        *geometry,
    )
    if not with_bias:
        del grads["bias"]
    return out, grads


PATHS = {"modules": _through_modules, "c_functions": _through_c_functions}
TOL = dict(rtol=1e-9, atol=1e-9)


def _compare(case_name, modulated, path, integer_offsets=False, with_bias=True):
    case = CONV_CASES[case_name]
    t = _make_inputs(case, modulated, integer_offsets=integer_offsets, with_bias=with_bias)
    ref_out, ref_grads = _reference_with_grads(case, t)
    out, grads = PATHS[path](case, t)
    errors = {"out": (out - ref_out).abs().max().item()}
    torch.testing.assert_close(out, ref_out, **TOL)
    assert set(grads) == set(ref_grads)
    for name, ref in ref_grads.items():
        if integer_offsets and name == "offset":
            continue  # one-sided derivative at a kink: no single right answer
        errors[name] = (grads[name] - ref).abs().max().item()
        torch.testing.assert_close(grads[name], ref, **TOL, msg=lambda m: f"grad {name}: {m}")
    return t, errors


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("modulated", [False, True], ids=["plain", "modulated"])
@pytest.mark.parametrize("case_name", sorted(CONV_CASES))
def test_deform_conv_matches_reference(case_name, modulated, path):
    if path == "modules" and not using_fallback_ops():
        pytest.skip("detectron2's compiled DeformConv has no CPU backward")
    case = CONV_CASES[case_name]
    if modulated and any(isinstance(v, tuple) for v in case[1:4]):
        pytest.skip("ModulatedDeformConv takes int stride/padding/dilation")
    t, _ = _compare(case_name, modulated, path, integer_offsets=False)
    inside, border, outside = _sampling_coverage(case, t["offset"])
    assert min(inside, border, outside) > 0.05, (inside, border, outside)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("modulated", [False, True], ids=["plain", "modulated"])
def test_deform_conv_integer_offsets(modulated, path):
    """Points exactly on pixels and on the borders: output and the gradients that are smooth
    there (input, weight, mask, bias) agree; the offset gradient is one-sided and skipped."""
    if path == "modules" and not using_fallback_ops():
        pytest.skip("detectron2's compiled DeformConv has no CPU backward")
    _compare("k3_all", modulated, path, integer_offsets=True)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_modulated_deform_conv_without_bias(path):
    """bias=False, as in DeformBottleneckBlock (detectron2 then passes a placeholder bias)."""
    if path == "modules" and not using_fallback_ops():
        pytest.skip("detectron2's compiled DeformConv has no CPU backward")
    _compare("k3_all", True, path, with_bias=False)


@requires_fallback
def test_deform_conv_routed_to_torchvision():
    import detectron2.layers.deform_conv as d2_deform

    from lgdkd.compat import deform

    assert d2_deform.deform_conv is deform.deform_conv
    assert d2_deform.modulated_deform_conv is deform.modulated_deform_conv
    x = torch.zeros(1, 4, 5, 5)
    with pytest.raises(ValueError, match="offset has 18 channels"):
        deform.deform_conv(x, torch.zeros(1, 18, 3, 3), torch.zeros(2, 4, 3, 3), 1, 0, 1, 1, 2)


@requires_fallback
@pytest.mark.parametrize("modulated", [False, True], ids=["plain", "modulated"])
def test_deformable_resnet_trains_on_cpu(modulated):
    """ResNet-50 layout (tiny widths) with DeformBottleneckBlock in res3-res5."""
    from detectron2.config import get_cfg
    from detectron2.layers import DeformConv, ModulatedDeformConv, ShapeSpec
    from detectron2.modeling.backbone.resnet import DeformBottleneckBlock, build_resnet_backbone

    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NORM, r.OUT_FEATURES = 50, "BN", ["res4", "res5"]
    r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.WIDTH_PER_GROUP = 8, 32, 8
    r.DEFORM_ON_PER_STAGE = [False, True, True, True]
    r.DEFORM_MODULATED, r.DEFORM_NUM_GROUPS = modulated, 2
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(0)
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    blocks = [m for m in model.modules() if isinstance(m, DeformBottleneckBlock)]
    assert len(blocks) == 4 + 6 + 3
    conv_type = ModulatedDeformConv if modulated else DeformConv
    assert all(isinstance(b.conv2, conv_type) for b in blocks)
    # offsets are zero-initialised (every point on a pixel); make them fractional
    for b in blocks:
        torch.nn.init.normal_(b.conv2_offset.weight, std=0.05)
    out = model(torch.randn(2, 3, 64, 64))
    assert out["res5"].shape == (2, 256, 2, 2)
    (out["res4"].square().mean() + out["res5"].square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for b in blocks:
        assert b.conv2.weight.grad.abs().sum() > 0
        assert b.conv2_offset.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Fresh interpreters: import orders, the .pth hook, the hook's inertness
# ---------------------------------------------------------------------------------------------
_NO_SITE_PRELUDE = f"""
import sys
sys.path.insert(0, {REPO_ROOT!r})
sys.path.append({sysconfig.get_paths()["purelib"]!r})
assert "site" not in sys.modules and "lgdkd" not in sys.modules
assert not any(type(f).__module__.startswith("lgdkd") for f in sys.meta_path)
"""

SCRIPTS = {
    "detectron2.modeling alone": (
        False,
        """
        import detectron2.modeling
        import detectron2._C
        assert detectron2._C.LGDKD_FALLBACK
        """,
    ),
    "detectron2.evaluation alone": (
        False,
        """
        import detectron2.evaluation
        from detectron2.evaluation import coco_evaluation, fast_eval_api
        assert coco_evaluation.COCOeval_opt is fast_eval_api.COCOeval_opt
        assert fast_eval_api.COCOeval_opt.__module__ == "lgdkd.compat.coco_eval"
        """,
    ),
    "lgdkd then detectron2.modeling": (
        False,
        """
        import lgdkd
        import detectron2.modeling
        """,
    ),
    "detectron2.layers then lgdkd": (
        False,
        """
        import detectron2.layers
        import lgdkd
        from detectron2.layers import deform_conv
        from lgdkd.compat import deform
        assert deform_conv.deform_conv is deform.deform_conv
        """,
    ),
    "detectron2.data.transforms (Pillow alias)": (
        False,
        """
        from detectron2.data import transforms
        from PIL import Image
        assert Image.LINEAR == Image.BILINEAR
        import numpy as np
        img = np.zeros((8, 10, 3), dtype=np.uint8)
        assert transforms.ResizeTransform(8, 10, 4, 5).apply_image(img).shape == (4, 5, 3)
        """,
    ),
    "no .pth hook: lgdkd first, then detectron2.modeling": (
        True,
        """
        # no compiled extension on disk (found without importing detectron2)
        import importlib.machinery, importlib.util
        d2_dirs = importlib.util.find_spec("detectron2").submodule_search_locations
        assert importlib.machinery.PathFinder.find_spec("detectron2._C", d2_dirs) is None
        assert "detectron2" not in sys.modules

        import lgdkd
        import detectron2.modeling
        import detectron2._C
        assert detectron2._C.LGDKD_FALLBACK
        """,
    ),
    "compiled _C found first: hook inert": (
        False,
        """
        import os, sys, tempfile
        import detectron2

        # A compiled extension is a detectron2/_C*.so found by the ordinary path finder in the
        # package's directory; a _C.py in an extra package directory is found the same way.
        fake = tempfile.mkdtemp()
        with open(os.path.join(fake, "_C.py"), "w") as f:
            f.write("def deform_conv_forward(*args):\\n    raise RuntimeError('fake')\\n")
        detectron2.__path__.append(fake)

        import lgdkd
        import detectron2.modeling, detectron2.evaluation
        from detectron2.evaluation import coco_evaluation, fast_eval_api
        from detectron2.layers import deform_conv
        from lgdkd.compat import compat_status

        assert sys.modules["detectron2._C"].__file__ == os.path.join(fake, "_C.py")
        assert not hasattr(sys.modules["detectron2._C"], "LGDKD_FALLBACK")
        assert "lgdkd.compat.d2_ops" not in sys.modules
        assert deform_conv.deform_conv.__self__ is deform_conv._DeformConv
        assert deform_conv.modulated_deform_conv.__self__ is deform_conv._ModulatedDeformConv
        assert fast_eval_api.COCOeval_opt.__module__ == "detectron2.evaluation.fast_eval_api"
        assert coco_evaluation.COCOeval_opt is fast_eval_api.COCOeval_opt
        d2_nms = sys.modules["detectron2.layers.nms"]
        assert d2_nms.nms_rotated.__module__ == "detectron2.layers.nms"
        assert compat_status().startswith("compiled"), compat_status()
        """,
    ),
}


@pytest.fixture(scope="module")
def script_results(tmp_path_factory):
    """Run every script of SCRIPTS at once, each in a fresh interpreter (about 5 s of CPU each).

    Run from an empty folder, so nothing is imported from the working directory; with
    ``no_site`` the interpreter starts with ``-S`` (no site-packages, hence no ``.pth``
    file) and gets site-packages and the repository on sys.path by hand.
    """
    cwd = tmp_path_factory.mktemp("fresh_interpreter")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    running = {}
    for name, (no_site, body) in SCRIPTS.items():
        code = (_NO_SITE_PRELUDE if no_site else "") + textwrap.dedent(body) + "\nprint('OK')\n"
        cmd = [sys.executable] + (["-S"] if no_site else []) + ["-c", code]
        running[name] = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results = {}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=240)
        results[name] = (proc.returncode, out, err)
    return results


@requires_fallback
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_fresh_interpreter(script_results, name):
    rc, out, err = script_results[name]
    assert rc == 0 and out.strip().endswith("OK"), f"exit {rc}\n{out}\n{err[-3000:]}"


# ---------------------------------------------------------------------------------------------
# COCO evaluation
# ---------------------------------------------------------------------------------------------
def _toy_detections(json_path, seed=0):
    """Detections from the GT: jittered hits, duplicates, misses and false positives.

    Coordinates are multiples of 1/8 px and scores float32 values, so detectron2's float32
    boxes and the float64 reference hold exactly the same numbers.
    Returns {image_id: (xyxy (K, 4) float64, scores (K,), contiguous classes (K,))}.
    """
    rng = np.random.RandomState(seed)
    data = json.load(open(json_path))
    by_image = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    dets = {}
    for image_id, anns in by_image.items():
        h, w = sizes[image_id]
        boxes, scores, classes = [], [], []
        for a in anns:
            x, y, bw, bh = a["bbox"]
            for _ in range(rng.choice([0, 1, 1, 1, 2])):
                jit = rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
                boxes.append([x + jit[0], y + jit[1], x + bw + jit[2], y + bh + jit[3]])
                wrong = rng.rand() < 0.1
                classes.append((a["category_id"] - 1 + wrong) % 2)
                scores.append(rng.uniform(0.3, 1.0))
        for _ in range(rng.randint(0, 4)):
            x0, y0 = rng.uniform(0, w - 10), rng.uniform(0, h - 10)
            boxes.append([x0, y0, x0 + rng.uniform(4, w / 2), y0 + rng.uniform(4, h / 2)])
            classes.append(rng.randint(2))
            scores.append(rng.uniform(0.0, 0.7))
        b = np.round(np.array(boxes, dtype=np.float64).reshape(-1, 4) * 8) / 8
        b[:, 0::2] = b[:, 0::2].clip(0, w)
        b[:, 1::2] = b[:, 1::2].clip(0, h)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.125)
        s = np.array(scores, dtype=np.float32).astype(np.float64)
        dets[image_id] = (b, s, np.array(classes, dtype=np.int64))
    return dets


@requires_fallback
def test_coco_evaluator_matches_pycocotools(tmp_path, monkeypatch, capsys):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import COCOEvaluator, coco_evaluation, fast_eval_api
    from detectron2.structures import Boxes, Instances
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from lgdkd.compat.coco_eval import cocoeval_class
    from lgdkd.data.toy import make_toy_coco

    json_path, image_root = make_toy_coco(str(tmp_path), num_images=16, seed=3, empty_every=5)
    name = "lgdkd_test_compat_toy"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_path, image_root)
    DatasetCatalog.get(name)  # sets thing_dataset_id_to_contiguous_id
    dets = _toy_detections(json_path)

    captured = []

    def capture(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    original = coco_evaluation._evaluate_predictions_on_coco
    monkeypatch.setattr(coco_evaluation, "_evaluate_predictions_on_coco", capture)
    evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False)
    evaluator.reset()
    for image_id, (boxes, scores, classes) in dets.items():
        inst = Instances((96, 128))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes)
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    results = evaluator.evaluate()["bbox"]
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)

    (d2_eval,) = captured
    assert isinstance(d2_eval, fast_eval_api.COCOeval_opt)
    assert fast_eval_api.COCOeval_opt.__module__ == "lgdkd.compat.coco_eval"
    assert fast_eval_api.COCOeval_opt.__mro__[1] is cocoeval_class().__mro__[1]

    gt = COCO(json_path)
    reference_dets = [
        {
            "image_id": image_id,
            "category_id": int(c) + 1,
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": float(s),
        }
        for image_id, (boxes, scores, classes) in dets.items()
        for b, s, c in zip(boxes.tolist(), scores, classes)
    ]
    ref = COCOeval(gt, gt.loadRes(reference_dets), "bbox")
    ref.evaluate()
    ref.accumulate()
    ref.summarize()
    capsys.readouterr()

    assert 0.2 < ref.stats[0] < 0.9, ref.stats  # a set where AP says something
    np.testing.assert_allclose(np.asarray(d2_eval.stats), ref.stats, rtol=0, atol=1e-6)
    for key in ("precision", "recall"):
        np.testing.assert_allclose(d2_eval.eval[key], ref.eval[key], rtol=0, atol=1e-6)
    for i, metric in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        expected = 100 * ref.stats[i] if ref.stats[i] >= 0 else float("nan")
        np.testing.assert_allclose(results[metric], expected, rtol=0, atol=1e-4, equal_nan=True)
    for k, cls_name in enumerate(("rectangle", "ellipse")):
        precision = ref.eval["precision"][:, :, k, 0, -1]
        expected = 100 * precision[precision > -1].mean()
        np.testing.assert_allclose(results[f"AP-{cls_name}"], expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Rotated ops and status
# ---------------------------------------------------------------------------------------------
@requires_fallback
def test_rotated_ops_raise_clear_error():
    from detectron2.layers import ROIAlignRotated, batched_nms_rotated, nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated
    from detectron2.structures import RotatedBoxes
    from detectron2.structures import pairwise_iou_rotated as structures_iou

    boxes = torch.tensor([[10.0, 10, 4, 4, 0], [11, 10, 4, 4, 30]])
    scores = torch.tensor([0.9, 0.8])
    calls = {
        "nms_rotated": lambda: nms_rotated(boxes, scores, 0.5),
        "batched_nms_rotated": lambda: batched_nms_rotated(
            boxes, scores, torch.tensor([0, 1]), 0.5
        ),
        "pairwise_iou_rotated": lambda: pairwise_iou_rotated(boxes, boxes),
        "RotatedBoxes iou": lambda: structures_iou(RotatedBoxes(boxes), RotatedBoxes(boxes)),
        "ROIAlignRotated": lambda: ROIAlignRotated((2, 2), 1.0, 0)(
            torch.zeros(1, 1, 8, 8), torch.tensor([[0, 4.0, 4, 2, 2, 0]])
        ),
    }
    for name, call in calls.items():
        with pytest.raises(NotImplementedError, match="compiled extension"):
            call()


def test_retinanet_head_with_group_norm():
    """v0.6 probes ``get_norm(norm, 1)``; recent torch refuses ``GroupNorm(32, 1)``."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.meta_arch.fcos import FCOSHead
    from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

    shapes = [ShapeSpec(channels=64)] * 2
    for head in (
        RetinaNetHead(input_shape=shapes, num_classes=2, num_anchors=3, conv_dims=[64], norm="GN"),
        FCOSHead(input_shape=shapes, num_classes=2, conv_dims=[64, 64], norm="GN"),
    ):
        norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and all((m.num_groups, m.num_channels) == (32, 64) for m in norms)
        logits = head([torch.zeros(1, 64, 4, 4)] * 2)[0]
        assert logits[0].shape[-2:] == (4, 4)


def test_compat_status():
    import detectron2._C

    status = compat_status()
    if using_fallback_ops():
        assert status.startswith("lgdkd.compat")
        assert detectron2._C.__spec__.origin == "lgdkd.compat.d2_ops"
        assert not detectron2._C.has_cuda()
    else:
        assert status.startswith("compiled")
        assert not getattr(detectron2._C, "LGDKD_FALLBACK", False)


def test_pascal_voc_sets_load(tmp_path):
    """detectron2 v0.6 reads VOC's image-id list with np.loadtxt(dtype=np.str), which numpy 2
    refuses: every VOC set (voc_2007_trainval, ...) failed to load."""
    from detectron2.data.datasets.pascal_voc import load_voc_instances

    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    for i in ("000001", "000002"):
        (tmp_path / "Annotations" / f"{i}.xml").write_text(
            "<annotation><size><width>20</width><height>10</height></size><object><name>cat"
            "</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>9</xmax>"
            "<ymax>8</ymax></bndbox></object></annotation>"
        )
    record, _ = load_voc_instances(str(tmp_path), "test", ["dog", "cat"])
    assert record["image_id"] == "000001" and record["width"] == 20
    assert record["annotations"][0]["category_id"] == 1
    assert record["annotations"][0]["bbox"] == [1.0, 2.0, 9.0, 8.0]
