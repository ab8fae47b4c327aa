"""Loss functions of Generalized Focal Loss and of Localization Distillation.

Generalized Focal Loss (GFocal) represents each side of a box as a discrete distribution over
``reg_max + 1`` bins and trains classification with an IoU-aware soft target:

* GFocal V1: Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding
  Boxes for Dense Object Detection", NeurIPS 2020, arXiv:2006.04388.
* GFocal V2: Li et al., "Generalized Focal Loss V2: Learning Reliable Localization Quality
  Estimation for Dense Object Detection", CVPR 2021, arXiv:2011.12885.

Localization Distillation (LD) distils those box-side distributions (and, optionally, the class
scores) of a GFocal teacher into a student with a temperature-scaled KL divergence:

* Zheng et al., "Localization Distillation for Dense Object Detection", CVPR 2022,
  arXiv:2102.12252 (official code: HikariTJU/LD).

Functions (all element-wise: no reduction, the caller normalises):

* :func:`quality_focal_loss` (QFL): BCE against the IoU-valued soft target, modulated by
  ``|y - sigma|^beta``; on logits (V1) or on probabilities (V2).
* :func:`distribution_focal_loss` (DFL): cross-entropy on the two bins around a continuous
  target, weighted by the linear interpolation weights.
* :func:`integral_distances`: expected bin index of each side's softmax distribution.
* :func:`distance2bbox` / :func:`bbox2distance`: (l, t, r, b) distances <-> XYXY boxes.
* :func:`localization_kl`: LD's KL divergence between teacher and student bin distributions.
  ``bin_reduction="mean"`` (default) averages the KL terms over the ``n + 1`` bins as the
  official LD code does (``KnowledgeDistillationKLDivLoss`` takes ``.mean(1)``; discussed in
  HikariTJU/LD issue #74), i.e. it is ``1 / (n + 1)`` of the true KL and the published LD loss
  weights were tuned with it; ``"sum"`` gives the true KL.
* :func:`class_kd_kl`: the same KL over the class logits (softmax over the K classes, averaged
  over classes), used by LD for classification distillation.

Every function computes in at least float32: half / bfloat16 (and integer) inputs are cast to
float32, float64 inputs stay float64. Autocast is disabled inside the functions, so they can be
called from mixed-precision code. Targets (``labels``, ``scores``, DFL ``target``) and teacher
logits are treated as constants: no gradient flows into them.
"""

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "quality_focal_loss",
    "distribution_focal_loss",
    "integral_distances",
    "distance2bbox",
    "bbox2distance",
    "localization_kl",
    "class_kd_kl",
]

_BIN_REDUCTIONS = ("mean", "sum")


def _as_float(x: Tensor) -> Tensor:
    """``x`` in at least float32 (half, bfloat16 and integers -> float32; float64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _autocast_off(x: Tensor):
    """A context that disables autocast on ``x``'s device (no-op for other device types)."""
    if x.device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, what: str) -> None:
    if student_logits.dim() != 2:
        raise ValueError(
            f"student_logits must be 2-D ({what}), got shape {tuple(student_logits.shape)}"
        )
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} != student_logits shape "
            f"{tuple(student_logits.shape)}"
        )


def quality_focal_loss(
    pred: Tensor,
    labels: Tensor,
    scores: Tensor,
    *,
    beta: float = 2.0,
    use_sigmoid: bool = True,
) -> Tensor:
    """Quality Focal Loss (GFocal V1 / V2), element-wise.

    Args:
        pred: (M, K) class logits (``use_sigmoid=True``, GFocal V1) or probabilities in
            [0, 1] (``use_sigmoid=False``, GFocal V2, whose joint score is already a
            probability).
        labels: (M,) integer class of each row in [0, K]; K means background. A label outside
            [0, K] raises an indexing error.
        scores: (M,) target quality (IoU with the matched box) of each row's label; ignored for
            background rows. Treated as a constant (detached).
        beta: exponent of the modulating factor.
        use_sigmoid: whether ``pred`` holds logits (True) or probabilities (False).

    Returns:
        (M, K) float loss ``BCE(sigma, y) * |y - sigma|^beta`` with ``sigma = sigmoid(pred)``
        (V1) or ``pred`` (V2), and the soft target ``y[m, labels[m]] = scores[m]`` for
        foreground rows, 0 elsewhere. The BCE is computed stably
        (``binary_cross_entropy_with_logits`` for V1, ``binary_cross_entropy`` for V2). As in
        the official GFocal code, the modulating factor is not detached: the whole product is
        differentiated with respect to ``pred``.
    """
    if pred.dim() != 2:
        raise ValueError(f"pred must be (M, K), got shape {tuple(pred.shape)}")
    m, k = pred.shape
    if labels.shape != (m,):
        raise ValueError(
            f"labels must be ({m},) to match pred {tuple(pred.shape)}, got "
            f"{tuple(labels.shape)}"
        )
    if scores.shape != (m,):
        raise ValueError(
            f"scores must be ({m},) to match pred {tuple(pred.shape)}, got "
            f"{tuple(scores.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    with _autocast_off(pred):
        pred = _as_float(pred)
        # Soft target: scatter into K + 1 columns so that background rows (label K) land in a
        # dropped extra column; no host synchronisation and out-of-range labels still fail.
        target = pred.new_zeros((m, k + 1))
        target.scatter_(
            1, labels.long().unsqueeze(1), _as_float(scores.detach()).to(pred.dtype).unsqueeze(1)
        )
        target = target[:, :k]
        if use_sigmoid:
            sigma = pred.sigmoid()
            bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        else:
            sigma = pred
            bce = F.binary_cross_entropy(pred, target, reduction="none")
        return bce * (target - sigma).abs().pow(beta)


def distribution_focal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss (GFocal V1), element-wise.

    Args:
        pred: (M, n + 1) logits over the bins 0..n of one box side.
        target: (M,) continuous target distance in bin units, in [0, n) (callers clamp it to
            ``n - 0.1``). Treated as a constant (detached).

    Returns:
        (M,) float loss ``CE(pred, l) * (r - target) + CE(pred, r) * (target - l)`` with
        ``l = floor(target)``, ``r = l + 1`` and ``CE(pred, i) = -log_softmax(pred)[i]``.
    """
    if pred.dim() != 2 or pred.shape[1] < 2:
        raise ValueError(f"pred must be (M, n + 1) with n >= 1, got shape {tuple(pred.shape)}")
    if target.shape != (pred.shape[0],):
        raise ValueError(
            f"target must be ({pred.shape[0]},) to match pred "
            f"{tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    with _autocast_off(pred):
        pred = _as_float(pred)
        target = _as_float(target.detach()).to(pred.dtype)
        left = target.floor()
        weight_left = left + 1 - target
        weight_right = target - left
        left = left.long()
        loss_left = F.cross_entropy(pred, left, reduction="none")
        loss_right = F.cross_entropy(pred, left + 1, reduction="none")
        return loss_left * weight_left + loss_right * weight_right


def integral_distances(reg_logits: Tensor, reg_max: int) -> Tensor:
    """Expected distance of each box side under its bin distribution (GFocal's "Integral").

    Args:
        reg_logits: (..., 4 * (reg_max + 1)) bin logits, side-major: the ``reg_max + 1`` bins
            of l, then of t, r, b.
        reg_max: largest bin index n.

    Returns:
        (..., 4) float ``sum_k softmax(logits_side)_k * k`` per side, in bin units.
    """
    if int(reg_max) != reg_max or reg_max < 1:
        raise ValueError(f"reg_max must be an integer >= 1, got {reg_max!r}")
    reg_max = int(reg_max)
    bins = reg_max + 1
    if reg_logits.dim() < 1 or reg_logits.shape[-1] != 4 * bins:
        raise ValueError(
            f"reg_logits must be (..., 4 * (reg_max + 1)) = (..., {4 * bins}) for reg_max = "
            f"{reg_max}, got shape {tuple(reg_logits.shape)}"
        )
    with _autocast_off(reg_logits):
        reg_logits = _as_float(reg_logits)
        prob = reg_logits.reshape(*reg_logits.shape[:-1], 4, bins).softmax(dim=-1)
        project = torch.arange(bins, dtype=prob.dtype, device=prob.device)
        return (prob * project).sum(dim=-1)


def distance2bbox(
    points: Tensor, distances: Tensor, max_shape: Optional[Tuple[int, int]] = None
) -> Tensor:
    """Boxes from points and their distances to the four box sides.

    Args:
        points: (M, 2) as (x, y).
        distances: (M, 4) as (l, t, r, b).
        max_shape: optional (h, w): x is clamped to [0, w] and y to [0, h].

    Returns:
        (M, 4) float boxes XYXY ``(x - l, y - t, x + r, y + b)``. Leading dimensions other than
        a single M are accepted as long as ``points`` and ``distances`` share them.
    """
    if points.dim() < 1 or points.shape[-1] != 2:
        raise ValueError(f"points must be (M, 2), got shape {tuple(points.shape)}")
    if distances.shape != points.shape[:-1] + (4,):
        raise ValueError(
            f"distances must be {tuple(points.shape[:-1]) + (4,)} to match points "
            f"{tuple(points.shape)}, got {tuple(distances.shape)}"
        )
    if max_shape is not None and len(max_shape) != 2:
        raise ValueError(f"max_shape must be (h, w), got {max_shape!r}")
    with _autocast_off(points):
        dtype = torch.promote_types(_as_float(points).dtype, _as_float(distances).dtype)
        points = points.to(dtype)
        distances = distances.to(dtype)
        x, y = points.unbind(-1)
        left, top, right, bottom = distances.unbind(-1)
        x1, y1, x2, y2 = x - left, y - top, x + right, y + bottom
        if max_shape is not None:
            h, w = max_shape
            x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
            y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
        return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points: Tensor, boxes: Tensor, max_dist: float, eps: float = 0.1) -> Tensor:
    """Distances from points to the four sides of boxes (the DFL regression target).

    Args:
        points: (M, 2) as (x, y).
        boxes: (M, 4) XYXY.
        max_dist: largest representable distance (reg_max, in the units of the inputs).
        eps: margin below ``max_dist``, so that the target stays in [0, max_dist).

    Returns:
        (M, 4) float ``(x - x1, y - y1, x2 - x, y2 - y)`` clamped to [0, max_dist - eps].
        Leading dimensions other than a single M are accepted as long as both inputs share
        them.
    """
    if points.dim() < 1 or points.shape[-1] != 2:
        raise ValueError(f"points must be (M, 2), got shape {tuple(points.shape)}")
    if boxes.shape != points.shape[:-1] + (4,):
        raise ValueError(
            f"boxes must be {tuple(points.shape[:-1]) + (4,)} to match points "
            f"{tuple(points.shape)}, got {tuple(boxes.shape)}"
        )
    if not max_dist - eps > 0:
        raise ValueError(f"max_dist - eps must be > 0, got max_dist={max_dist!r}, eps={eps!r}")
    with _autocast_off(points):
        dtype = torch.promote_types(_as_float(points).dtype, _as_float(boxes).dtype)
        points = points.to(dtype)
        boxes = boxes.to(dtype)
        x, y = points.unbind(-1)
        x1, y1, x2, y2 = boxes.unbind(-1)
        distances = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)
        return distances.clamp(min=0, max=max_dist - eps)


def _kl_terms(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """(M, C) terms ``p_T * (log p_T - log q_S)`` of the temperature-softened KL(p_T || q_S),
    with the teacher detached and 0 wherever ``p_T`` is exactly 0."""
    dtype = torch.promote_types(_as_float(student_logits).dtype, _as_float(teacher_logits).dtype)
    teacher_logits = teacher_logits.detach().to(dtype)
    student_logits = student_logits.to(dtype)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    p = log_p.exp()
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    # xlogy-style: a bin the teacher gives exactly zero mass contributes 0 (not 0 * inf = NaN).
    terms = p * (log_p - log_q)
    return torch.where(p > 0, terms, torch.zeros_like(terms))


def localization_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    *,
    bin_reduction: str = "mean",
) -> Tensor:
    """Localization Distillation loss of one box side per row, element-wise.

    Args:
        student_logits: (M, n + 1) bin logits of one box side (callers reshape
            (P, 4 * (n + 1)) to (4 * P, n + 1)).
        teacher_logits: (M, n + 1); detached inside the function.
        temperature: T > 0.
        bin_reduction: "mean" (default; the official LD code's averaging over the n + 1 bins,
            i.e. 1 / (n + 1) of the true KL, with which the published loss weights were tuned)
            or "sum" (the true KL).

    Returns:
        (M,) float ``T^2 * reduce_k p_k * (log p_k - log q_k)`` with
        ``p = softmax(teacher / T)`` and ``log q = log_softmax(student / T)``; bins with
        ``p_k = 0`` contribute 0.
    """
    if bin_reduction not in _BIN_REDUCTIONS:
        raise ValueError(f"bin_reduction must be one of {_BIN_REDUCTIONS}, got {bin_reduction!r}")
    _check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, "M, n + 1")
    with _autocast_off(student_logits):
        terms = _kl_terms(student_logits, teacher_logits, temperature)
        kl = terms.mean(dim=1) if bin_reduction == "mean" else terms.sum(dim=1)
        return kl * (temperature * temperature)


def class_kd_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, activation: str = "softmax"
) -> Tensor:
    """LD's classification distillation loss per row, element-wise.

    The class logits are trained with sigmoids, but LD nevertheless distils them through a
    softmax over the K classes (``activation="softmax"``). With K = 1 that softmax is always 1
    and the loss is identically 0; ``activation="sigmoid"`` distils each class as its own
    Bernoulli variable instead (not in the LD code).

    Args:
        student_logits: (M, K) class logits.
        teacher_logits: (M, K); detached inside the function.
        temperature: T > 0.
        activation: "softmax" (official) or "sigmoid".

    Returns:
        (M,) float ``T^2 * mean_c KL_c``. "softmax": ``KL_c = p_c (log p_c - log q_c)`` with
        ``p = softmax(teacher / T)``, ``q = softmax(student / T)``; "sigmoid": ``KL_c`` the
        binary KL between ``sigmoid(teacher_c / T)`` and ``sigmoid(student_c / T)``. Terms with
        zero teacher probability contribute 0.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, "M, K")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"class_kd_kl: activation {activation!r}; valid: softmax, sigmoid")
    with _autocast_off(student_logits):
        if activation == "softmax":
            terms = _kl_terms(student_logits, teacher_logits, temperature)
        else:
            dtype = torch.promote_types(
                _as_float(student_logits).dtype, _as_float(teacher_logits).dtype
            )
            t = teacher_logits.detach().to(dtype) / temperature
            z = student_logits.to(dtype) / temperature
            p = t.sigmoid()
            terms = p * (F.logsigmoid(t) - F.logsigmoid(z)) + (1 - p) * (
                F.logsigmoid(-t) - F.logsigmoid(-z)
            )
        return terms.mean(dim=1) * (temperature * temperature)
