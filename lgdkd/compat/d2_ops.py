"""Stand-in for ``detectron2._C`` when detectron2 is installed without its compiled extension.

Loaded by :mod:`lgdkd.compat.hook` as ``detectron2._C`` only when no compiled module exists.
Every function keeps the compiled extension's signature and in-place output convention:

* deformable convolution (plain and modulated, forward and backward) through torchvision;
* the fast COCOeval entry points are not provided here: :mod:`lgdkd.compat.coco_eval` replaces
  ``detectron2.evaluation.fast_eval_api.COCOeval_opt`` as a whole (faster-coco-eval, else
  pycocotools);
* rotated-box ops raise a clear error (no project component uses them).
"""

import torch
from torchvision.ops import deform_conv2d

LGDKD_FALLBACK = True


def get_compiler_version():
    return "not compiled (detectron2._C served by lgdkd.compat)"


def get_cuda_version():
    return "not compiled (detectron2._C served by lgdkd.compat)"


def has_cuda():
    return False


def _tv(input, weight, offset, mask, bias, kh, kw, sh, sw, ph, pw, dh, dw):
    assert tuple(weight.shape[2:]) == (kh, kw), "kernel size disagrees with weight shape"
    return deform_conv2d(
        input,
        offset,
        weight,
        bias,
        stride=(sh, sw),
        padding=(ph, pw),
        dilation=(dh, dw),
        mask=mask,
    )


def _grads(inputs, fn, grad_output):
    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in inputs]
    with torch.enable_grad():
        out = fn(*leaves)
    wanted = [t for t in leaves if t is not None]
    got = iter(torch.autograd.grad(out, wanted, grad_output))
    return [next(got) if t is not None else None for t in leaves]


def deform_conv_forward(
    input,
    weight,
    offset,
    output,
    columns,
    ones,
    kW,
    kH,
    dW,
    dH,
    padW,
    padH,
    dilW,
    dilH,
    group,
    deformable_group,
    im2col_step,
):
    out = _tv(input, weight, offset, None, None, kH, kW, dH, dW, padH, padW, dilH, dilW)
    output.resize_as_(out).copy_(out)


def deform_conv_backward_input(
    input,
    offset,
    gradOutput,
    gradInput,
    gradOffset,
    weight,
    columns,
    kW,
    kH,
    dW,
    dH,
    padW,
    padH,
    dilW,
    dilH,
    group,
    deformable_group,
    im2col_step,
):
    def fn(x, off):
        return _tv(x, weight, off, None, None, kH, kW, dH, dW, padH, padW, dilH, dilW)

    gi, go = _grads([input, offset], fn, gradOutput)
    gradInput.copy_(gi)
    gradOffset.copy_(go)


def deform_conv_backward_filter(
    input,
    offset,
    gradOutput,
    gradWeight,
    columns,
    ones,
    kW,
    kH,
    dW,
    dH,
    padW,
    padH,
    dilW,
    dilH,
    group,
    deformable_group,
    scale,
    im2col_step,
):
    # The compiled signature carries no weight: the output is linear in it, so its gradient
    # does not depend on its value and any tensor of gradWeight's shape serves.
    def fn(w):
        return _tv(input, w, offset, None, None, kH, kW, dH, dW, padH, padW, dilH, dilW)

    (gw,) = _grads([torch.zeros_like(gradWeight)], fn, gradOutput)
    gradWeight.add_(gw, alpha=scale)


def modulated_deform_conv_forward(
    input,
    weight,
    bias,
    ones,
    offset,
    mask,
    output,
    columns,
    kernel_h,
    kernel_w,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dilation_h,
    dilation_w,
    group,
    deformable_group,
    with_bias,
):
    out = _tv(
        input,
        weight,
        offset,
        mask,
        bias if with_bias else None,
        kernel_h,
        kernel_w,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dilation_h,
        dilation_w,
    )
    output.resize_as_(out).copy_(out)


def modulated_deform_conv_backward(
    input,
    weight,
    bias,
    ones,
    offset,
    mask,
    columns,
    grad_input,
    grad_weight,
    grad_bias,
    grad_offset,
    grad_mask,
    grad_output,
    kernel_h,
    kernel_w,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dilation_h,
    dilation_w,
    group,
    deformable_group,
    with_bias,
):
    def fn(x, w, off, m, b):
        return _tv(
            x,
            w,
            off,
            m,
            b,
            kernel_h,
            kernel_w,
            stride_h,
            stride_w,
            pad_h,
            pad_w,
            dilation_h,
            dilation_w,
        )

    grads = _grads([input, weight, offset, mask, bias if with_bias else None], fn, grad_output)
    for dst, g in zip([grad_input, grad_weight, grad_offset, grad_mask, grad_bias], grads):
        if g is not None:
            dst.copy_(g)


def _rotated_unavailable(*args, **kwargs):
    raise NotImplementedError(
        "Rotated-box ops (box_iou_rotated, nms_rotated, roi_align_rotated) need detectron2's "
        "compiled extension, which this installation does not have. lgdkd does not use them; "
        "to use them, build detectron2 from source "
        "(https://github.com/facebookresearch/detectron2)."
    )


box_iou_rotated = _rotated_unavailable
nms_rotated = _rotated_unavailable
roi_align_rotated_forward = _rotated_unavailable
roi_align_rotated_backward = _rotated_unavailable


def _fast_cocoeval_unavailable(*args, **kwargs):
    raise NotImplementedError(
        "detectron2's compiled COCOeval is not installed; lgdkd.compat serves "
        "detectron2.evaluation.fast_eval_api.COCOeval_opt from faster-coco-eval instead. "
        "This entry point is reached only by code that calls detectron2._C directly."
    )


InstanceAnnotation = _fast_cocoeval_unavailable
COCOevalEvaluateImages = _fast_cocoeval_unavailable
COCOevalAccumulate = _fast_cocoeval_unavailable
