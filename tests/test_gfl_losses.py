"""Tests of lgdkd.layers.gfl_losses against independent float64 references written from the
definitions with explicit loops (math / numpy), plus the properties the losses must have."""

import math

import numpy as np
import pytest
import torch

from lgdkd.layers.gfl_losses import (
    bbox2distance,
    class_kd_kl,
    distance2bbox,
    distribution_focal_loss,
    integral_distances,
    localization_kl,
    quality_focal_loss,
)

# ----------------------------------------------------------------------------- references


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _ref_qfl(prob, labels, scores, beta):
    """QFL per element from probabilities: -(y log s + (1 - y) log(1 - s)) * |y - s|^beta."""
    prob = np.asarray(prob, dtype=np.float64)
    m, k = prob.shape
    out = np.zeros((m, k))
    for i in range(m):
        for c in range(k):
            y = float(scores[i]) if int(labels[i]) == c else 0.0
            s = float(prob[i, c])
            bce = -(y * math.log(s) + (1.0 - y) * math.log(1.0 - s))
            out[i, c] = bce * abs(y - s) ** beta
    return out


def _log_softmax_row(row):
    row = [float(v) for v in row]
    top = max(row)
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_z for v in row]


def _ref_dfl(pred, target):
    """DFL from explicit log-softmax values at the two bins around the target."""
    out = []
    for row, y in zip(np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)):
        log_p = _log_softmax_row(row)
        left = int(math.floor(y))
        right = left + 1
        out.append(-log_p[left] * (right - y) - log_p[right] * (y - left))
    return np.array(out)


def _ref_kl_rows(student, teacher, temperature):
    """Per row: the list of p_k * log(p_k / q_k) over k (0 where p_k == 0)."""
    rows = []
    for s_row, t_row in zip(np.asarray(student, np.float64), np.asarray(teacher, np.float64)):
        log_p = _log_softmax_row(t_row / temperature)
        log_q = _log_softmax_row(s_row / temperature)
        terms = []
        for lp, lq in zip(log_p, log_q):
            p = math.exp(lp)
            terms.append(0.0 if p == 0.0 else p * math.log(p / math.exp(lq)))
        rows.append(terms)
    return rows


def _ref_integral(logits, reg_max):
    logits = np.asarray(logits, dtype=np.float64)
    flat = logits.reshape(-1, logits.shape[-1])
    out = np.zeros((flat.shape[0], 4))
    for i, row in enumerate(flat):
        for side in range(4):
            chunk = row[side * (reg_max + 1) : (side + 1) * (reg_max + 1)]
            weights = np.exp(chunk - chunk.max())
            weights /= weights.sum()
            out[i, side] = sum(k * weights[k] for k in range(reg_max + 1))
    return out.reshape(logits.shape[:-1] + (4,))


# ----------------------------------------------------------------------------- fixtures

_QFL_LOGITS = torch.tensor(
    [
        [1.5, -0.3, 0.2, -2.0],
        [-1.0, 2.2, -0.7, 0.4],
        [0.0, 0.1, -3.1, 1.2],
        [-0.5, -1.5, 0.9, 2.5],
        [3.0, -2.5, 0.6, -0.1],
        [-0.2, 0.8, 1.7, -1.1],
    ]
)
_QFL_LABELS = torch.tensor([0, 4, 2, 3, 4, 1])  # K = 4 is background
_QFL_SCORES = torch.tensor([0.83, 0.5, 0.27, 0.95, 0.11, 0.0])

_BIN_LOGITS = torch.tensor(
    [
        [0.3, 1.2, -0.4, 2.0, -1.1, 0.5, 0.0, -0.9],
        [2.5, 0.1, -0.3, -2.0, 1.4, 0.2, -0.6, 0.8],
        [-1.3, -0.2, 0.7, 0.9, -0.8, 1.6, 0.4, -2.2],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 0.5, -0.5],
    ]
)  # n = 7
_BIN_LOGITS_2 = torch.tensor(
    [
        [0.1, 0.9, -1.4, 1.0, -0.1, 0.3, 1.1, -0.2],
        [1.5, 0.6, 0.3, -1.0, 0.4, -0.2, -1.6, 0.0],
        [-0.3, 0.2, 1.7, 0.2, -1.8, 0.6, 0.9, -1.2],
        [0.4, -0.7, 0.0, 1.3, 0.2, -0.5, 0.1, 0.8],
        [2.0, -1.5, 1.0, -1.0, 2.5, -2.0, 1.5, 0.0],
    ]
)


# ----------------------------------------------------------------------------- QFL


@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_qfl_v1_matches_reference(beta):
    got = quality_focal_loss(_QFL_LOGITS, _QFL_LABELS, _QFL_SCORES, beta=beta)
    prob = [[_sigmoid(float(v)) for v in row] for row in _QFL_LOGITS]
    ref = _ref_qfl(prob, _QFL_LABELS, _QFL_SCORES, beta)
    assert got.shape == (6, 4) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_qfl_v2_matches_reference_and_v1_on_sigmoid():
    prob = _QFL_LOGITS.sigmoid()
    v2 = quality_focal_loss(prob, _QFL_LABELS, _QFL_SCORES, use_sigmoid=False)
    v1 = quality_focal_loss(_QFL_LOGITS, _QFL_LABELS, _QFL_SCORES, use_sigmoid=True)
    assert v2.dtype == torch.float32
    torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-5)
    ref = _ref_qfl(prob.double().numpy(), _QFL_LABELS, _QFL_SCORES, 2.0)
    np.testing.assert_allclose(v2.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_qfl_gradient_of_whole_product():
    """The modulating factor is differentiated too (not detached): autograd matches finite
    differences of the full expression, and differs from the detached-factor gradient."""
    logits = _QFL_LOGITS.double().requires_grad_(True)
    scores = _QFL_SCORES.double()
    assert torch.autograd.gradcheck(lambda x: quality_focal_loss(x, _QFL_LABELS, scores), (logits,))
    probs = _QFL_LOGITS.double().sigmoid().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: quality_focal_loss(x, _QFL_LABELS, scores, use_sigmoid=False), (probs,)
    )

    logits.grad = None
    quality_focal_loss(logits, _QFL_LABELS, scores).sum().backward()
    # Gradient with the factor detached, from the closed form: (s - y) * |y - s|^beta.
    sigma = logits.detach().sigmoid()
    target = torch.zeros_like(sigma)
    fg = _QFL_LABELS < 4
    target[fg.nonzero().squeeze(1), _QFL_LABELS[fg]] = scores[fg]
    detached_grad = (sigma - target) * (target - sigma).abs() ** 2
    assert not torch.allclose(logits.grad, detached_grad, atol=1e-4)


def test_qfl_background_rows_gradient_and_background_only_batch():
    logits = _QFL_LOGITS.clone().requires_grad_(True)
    quality_focal_loss(logits, _QFL_LABELS, _QFL_SCORES).sum().backward()
    background = _QFL_LABELS == 4
    grad_bg = logits.grad[background]
    assert torch.isfinite(logits.grad).all()
    assert (grad_bg.abs() > 0).all()
    assert (grad_bg > 0).all()  # background pushes every logit down

    labels = torch.full((3,), 4, dtype=torch.long)
    scores = torch.tensor([float("nan"), 0.7, 0.0])  # ignored for background rows
    only_bg = _QFL_LOGITS[:3].clone().requires_grad_(True)
    loss = quality_focal_loss(only_bg, labels, scores)
    prob = [[_sigmoid(float(v)) for v in row] for row in _QFL_LOGITS[:3]]
    ref = _ref_qfl(prob, labels, torch.zeros(3), 2.0)
    np.testing.assert_allclose(loss.detach().numpy(), ref, rtol=1e-5, atol=1e-7)
    loss.sum().backward()
    assert torch.isfinite(only_bg.grad).all() and (only_bg.grad.abs() > 0).all()

    empty = quality_focal_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert empty.shape == (0, 4)


def test_qfl_half_input_returns_float32():
    got = quality_focal_loss(_QFL_LOGITS.half(), _QFL_LABELS, _QFL_SCORES.half())
    ref = quality_focal_loss(_QFL_LOGITS.half().float(), _QFL_LABELS, _QFL_SCORES.half().float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


def test_qfl_shape_errors():
    with pytest.raises(ValueError, match="pred"):
        quality_focal_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        quality_focal_loss(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="scores"):
        quality_focal_loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="labels"):
        quality_focal_loss(torch.zeros(4, 3), torch.zeros(4), torch.zeros(4))


# ----------------------------------------------------------------------------- DFL


def test_dfl_matches_reference():
    target = torch.tensor([0.0, 2.5, 6.9, 3.25, 4.0])
    got = distribution_focal_loss(_BIN_LOGITS, target)
    assert got.shape == (5,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _ref_dfl(_BIN_LOGITS, target), rtol=1e-5)
    assert torch.autograd.gradcheck(
        lambda x: distribution_focal_loss(x, target.double()),
        (_BIN_LOGITS.double().requires_grad_(True),),
    )


def test_dfl_minimal_at_interpolating_distribution():
    """At the distribution with mass (r - y) on l and (y - l) on r the gradient is ~0, and
    perturbing it only increases the loss."""
    n = 7
    target = torch.tensor([2.3, 0.6, 5.75, 6.9])
    prob = torch.full((4, n + 1), 1e-9, dtype=torch.float64)
    for i, y in enumerate(target.tolist()):
        left = math.floor(y)
        prob[i, left] = left + 1 - y
        prob[i, left + 1] = y - left
    pred = prob.log().requires_grad_(True)
    loss = distribution_focal_loss(pred, target.double())
    loss.sum().backward()
    assert pred.grad.abs().max() < 1e-6

    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        perturbed = pred.detach() + 0.3 * torch.randn(pred.shape, generator=generator).double()
        assert (distribution_focal_loss(perturbed, target.double()) > loss.detach()).all()


def test_dfl_shape_errors():
    with pytest.raises(ValueError, match="target"):
        distribution_focal_loss(torch.zeros(3, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="pred"):
        distribution_focal_loss(torch.zeros(8), torch.zeros(8))


# ----------------------------------------------------------------------------- integral and boxes


def test_integral_matches_reference():
    reg_max = 7
    logits = torch.cat([_BIN_LOGITS[:4].reshape(1, 32), _BIN_LOGITS_2[:4].reshape(1, 32)])
    logits = logits.reshape(2, 1, 32)  # leading dimensions are kept
    got = integral_distances(logits, reg_max)
    assert got.shape == (2, 1, 4) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _ref_integral(logits, reg_max), rtol=1e-5)


def test_integral_of_one_hot_is_bin_index():
    reg_max = 16
    bins = torch.tensor([[0, 16, 5, 9], [3, 3, 12, 1]])
    logits = torch.full((2, 4, reg_max + 1), -1e4)
    logits.scatter_(2, bins.unsqueeze(2), 0.0)
    got = integral_distances(logits.reshape(2, -1), reg_max)
    torch.testing.assert_close(got, bins.float())
    with pytest.raises(ValueError, match="reg_logits"):
        integral_distances(torch.zeros(2, 32), 16)


def test_distance2bbox_and_clamp():
    points = torch.tensor([[10.0, 20.0], [3.0, 4.0]])
    distances = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 1.0, 2.0, 30.0]])
    boxes = distance2bbox(points, distances)
    expected = torch.tensor([[9.0, 18.0, 13.0, 24.0], [-2.0, 3.0, 5.0, 34.0]])
    torch.testing.assert_close(boxes, expected)
    clamped = distance2bbox(points, distances, max_shape=(25, 12))  # (h, w)
    torch.testing.assert_close(clamped, torch.tensor([[9.0, 18.0, 12.0, 24.0], [0, 3, 5, 25.0]]))
    with pytest.raises(ValueError, match="distances"):
        distance2bbox(points, distances[:, :3])
    with pytest.raises(ValueError, match="points"):
        distance2bbox(points[:, :1], distances)


def test_integral_distance2bbox_bbox2distance_round_trip():
    reg_max = 16
    points = torch.tensor([[50.0, 40.0], [8.0, 8.0], [100.5, 60.25]])
    bins = torch.tensor([[3, 0, 15, 7], [1, 2, 3, 4], [10, 12, 0, 6]])
    logits = torch.full((3, 4, reg_max + 1), -1e4)
    logits.scatter_(2, bins.unsqueeze(2), 0.0)
    stride = 8.0
    distances = integral_distances(logits.reshape(3, -1), reg_max) * stride
    boxes = distance2bbox(points, distances)
    # In bin units (what DFL targets use): points / stride and boxes / stride.
    back = bbox2distance(points / stride, boxes / stride, reg_max, eps=0.1)
    torch.testing.assert_close(back, bins.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        distance2bbox(points / stride, back) * stride, boxes, atol=1e-4, rtol=0
    )

    # Boxes containing their points with distances below max_dist - eps come back exactly.
    generator = torch.Generator().manual_seed(1)
    pts = torch.rand(50, 2, generator=generator) * 100
    dist = torch.rand(50, 4, generator=generator) * (reg_max - 0.1)
    torch.testing.assert_close(
        bbox2distance(pts, distance2bbox(pts, dist), reg_max), dist, rtol=0, atol=1e-5
    )


def test_bbox2distance_clamps():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 40.0]] * 3)
    points = torch.tensor([[15.0, 12.0], [5.0, 25.0], [30.0, 45.0]])  # inside, left, below-right
    got = bbox2distance(points, boxes, max_dist=16, eps=0.1)
    expected = torch.tensor(
        [[5.0, 2.0, 5.0, 15.9], [0.0, 15.0, 15.0, 15.0], [15.9, 15.9, 0.0, 0.0]]
    )
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="boxes"):
        bbox2distance(points, boxes[:2], max_dist=16)


# ----------------------------------------------------------------------------- LD KL losses


def test_localization_kl_matches_reference_and_reductions():
    temperature = 10.0
    got_mean = localization_kl(_BIN_LOGITS, _BIN_LOGITS_2, temperature)
    got_sum = localization_kl(_BIN_LOGITS, _BIN_LOGITS_2, temperature, bin_reduction="sum")
    rows = _ref_kl_rows(_BIN_LOGITS, _BIN_LOGITS_2, temperature)
    ref_sum = np.array([temperature**2 * sum(r) for r in rows])
    ref_mean = np.array([temperature**2 * sum(r) / len(r) for r in rows])
    assert got_mean.shape == (5,) and got_mean.dtype == torch.float32
    np.testing.assert_allclose(got_mean.numpy(), ref_mean, rtol=1e-4)
    np.testing.assert_allclose(got_sum.numpy(), ref_sum, rtol=1e-4)
    torch.testing.assert_close(got_sum, 8 * got_mean)
    assert (got_mean > 0).all()


def test_class_kd_kl_matches_reference():
    temperature = 2.0
    got = class_kd_kl(_QFL_LOGITS, _QFL_LOGITS.flip(0), temperature)
    rows = _ref_kl_rows(_QFL_LOGITS, _QFL_LOGITS.flip(0), temperature)
    ref = np.array([temperature**2 * sum(r) / len(r) for r in rows])
    assert got.shape == (6,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    assert (got > 0).all()


@pytest.mark.parametrize("loss_fn", [localization_kl, class_kd_kl])
def test_kd_zero_for_identical_logits_and_temperature_scaling(loss_fn):
    zero = loss_fn(_BIN_LOGITS, _BIN_LOGITS.clone(), 3.0)
    assert torch.equal(zero, torch.zeros(5))
    for temperature in (0.5, 1.0, 4.0):
        scaled = loss_fn(_BIN_LOGITS, _BIN_LOGITS_2, temperature)
        plain = loss_fn(_BIN_LOGITS / temperature, _BIN_LOGITS_2 / temperature, 1.0)
        torch.testing.assert_close(scaled, temperature**2 * plain)
    with pytest.raises(ValueError, match="temperature"):
        loss_fn(_BIN_LOGITS, _BIN_LOGITS_2, 0.0)


@pytest.mark.parametrize("loss_fn", [localization_kl, class_kd_kl])
def test_kd_no_gradient_into_teacher(loss_fn):
    student = _BIN_LOGITS.clone().requires_grad_(True)
    teacher = _BIN_LOGITS_2.clone().requires_grad_(True)
    loss_fn(student, teacher, 2.0).sum().backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(
        lambda s: loss_fn(s, _BIN_LOGITS_2.double(), 2.0),
        (_BIN_LOGITS.double().requires_grad_(True),),
    )


@pytest.mark.parametrize("loss_fn", [localization_kl, class_kd_kl])
@pytest.mark.parametrize("fill", [float("-inf"), -1e4])
def test_kd_teacher_with_exact_zeros(loss_fn, fill):
    teacher = _BIN_LOGITS_2.clone()
    teacher[:, 2] = fill
    teacher[0, 5:] = fill
    student = _BIN_LOGITS.clone()
    student[1, 2] = float("-inf")  # student -inf where the teacher has zero mass: still 0
    student.requires_grad_(True)
    loss = loss_fn(student, teacher, 1.0)
    assert torch.isfinite(loss).all()
    rows = _ref_kl_rows(student.detach(), teacher, 1.0)
    np.testing.assert_allclose(loss.detach().numpy(), [sum(r) / len(r) for r in rows], rtol=1e-5)
    loss.sum().backward()
    assert torch.isfinite(student.grad).all()
    same = loss_fn(teacher, teacher, 1.0)
    assert torch.equal(same, torch.zeros(5))


def test_localization_kl_half_and_errors():
    got = localization_kl(_BIN_LOGITS.half(), _BIN_LOGITS_2.half(), 2.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got, localization_kl(_BIN_LOGITS.half().float(), _BIN_LOGITS_2.half().float(), 2.0)
    )
    with pytest.raises(ValueError, match="bin_reduction"):
        localization_kl(_BIN_LOGITS, _BIN_LOGITS_2, 2.0, bin_reduction="batchmean")
    with pytest.raises(ValueError, match="teacher_logits"):
        localization_kl(_BIN_LOGITS, _BIN_LOGITS_2[:, :7], 2.0)
    with pytest.raises(ValueError, match="student_logits"):
        class_kd_kl(_BIN_LOGITS.reshape(-1), _BIN_LOGITS_2.reshape(-1), 2.0)


def test_class_kd_kl_sigmoid_matches_reference_and_works_with_one_class():
    temperature = 2.0
    s, t = _QFL_LOGITS, _QFL_LOGITS.flip(0)
    got = class_kd_kl(s, t, temperature, activation="sigmoid")
    ps = 1.0 / (1.0 + np.exp(-t.double().numpy() / temperature))
    qs = 1.0 / (1.0 + np.exp(-s.double().numpy() / temperature))
    kl = ps * np.log(ps / qs) + (1 - ps) * np.log((1 - ps) / (1 - qs))
    np.testing.assert_allclose(got.numpy(), temperature**2 * kl.mean(axis=1), rtol=1e-5)
    # one class: the official softmax KD is identically 0, the binary KL is not
    one_s, one_t = s[:, :1], t[:, :1]
    assert torch.equal(class_kd_kl(one_s, one_t, temperature), torch.zeros(len(s)))
    binary = class_kd_kl(one_s, one_t, temperature, activation="sigmoid")
    assert (binary[(one_s != one_t).squeeze(1)] > 0).all()
    assert torch.equal(class_kd_kl(one_s, one_s, temperature, "sigmoid"), torch.zeros(len(s)))
    with pytest.raises(ValueError, match="activation"):
        class_kd_kl(s, t, temperature, activation="softplus")
