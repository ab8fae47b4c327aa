"""Tests of lgdkd.layers.voting_nms: Cluster-NMS against torchvision's NMS and a greedy DIoU-NMS,
score voting against a per-box re-statement of the official LD code (4000-px class shift)."""

import math

import pytest
import torch
from torchvision.ops import batched_nms, box_iou, distance_box_iou

from lgdkd.layers.voting_nms import cluster_nms, pairwise_iou_diou, voting_cluster_diou_nms

# ---------------------------------------------------------------------------------------------
# helpers: random candidate sets and plain-Python references (float64, no torch)


def random_candidates(seed, n_min=5, n_max=200, max_classes=4, size=500.0, jitter=20.0):
    """Boxes clustered around a few centres (so that they overlap), distinct scores in random
    order, 1..max_classes classes."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(n_min, n_max + 1, (1,), generator=g))
    num_classes = int(torch.randint(1, max_classes + 1, (1,), generator=g))
    num_centres = int(torch.randint(1, 6, (1,), generator=g))
    centres = torch.rand(num_centres, 2, generator=g) * size + 100.0
    which = torch.randint(0, num_centres, (n,), generator=g)
    xy = centres[which] + torch.randn(n, 2, generator=g) * jitter
    wh = 40.0 + torch.rand(n, 2, generator=g) * 100.0
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    scores = (torch.randperm(n, generator=g).float() + 1.0) / (n + 1.0)  # no ties
    classes = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, classes


def py_diou(a, b, beta=0.8, metric="diou"):
    """IoU / DIoU of two XYXY boxes given as Python sequences."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / union
    if metric == "iou":
        return iou
    rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + (
        (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    ) ** 2
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    return iou - (rho2 / c2) ** beta


def greedy_diou_nms(boxes, scores, classes, threshold, beta):
    """Textbook greedy NMS per class: visit by descending score, keep a box unless a kept box
    of its class overlaps it by more than the threshold."""
    boxes, scores, classes = boxes.tolist(), scores.tolist(), classes.tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if all(
            classes[k] != classes[i] or py_diou(boxes[k], boxes[i], beta) <= threshold for k in kept
        ):
            kept.append(i)
    return kept


def official_voting_reference(
    boxes, scores, classes, threshold=0.6, beta=0.8, gate=0.7, sigma=0.025, max_detections=100
):
    """Per-box re-statement of LD's voting_cluster_diounms, classes separated like the official
    code by shifting the boxes of class k by 4000 * k px (valid for images < 4000 px)."""
    boxes, scores, classes = boxes.tolist(), scores.tolist(), classes.tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable
    b = [boxes[i] for i in order]
    s = [scores[i] for i in order]
    shifted = [[x + 4000.0 * classes[i] for x in boxes[i]] for i in order]
    n = len(order)
    d = [[py_diou(shifted[i], shifted[j], beta) for j in range(n)] for i in range(n)]
    upper = [[d[i][j] if j > i else 0.0 for j in range(n)] for i in range(n)]
    # Cluster-NMS iterations
    mat = upper
    for _ in range(1000):
        prev = mat
        col_max = [max(prev[i][j] for i in range(n)) for j in range(n)]
        keep = [m <= threshold for m in col_max]
        mat = [[upper[i][j] if keep[i] else 0.0 for j in range(n)] for i in range(n)]
        if mat == prev:
            break
    keep = [max(mat[i][j] for i in range(n)) <= threshold for j in range(n)]
    # score voting over every candidate j (weight ~e^-40 * s_j for the non-voting ones)
    out_idx, out_boxes = [], []
    for i in range(n):
        if not keep[i]:
            continue
        num, den = [0.0] * 4, 0.0
        for j in range(n):
            v = 1.0 if j == i else (d[i][j] if j > i else 0.0)
            v = v if v > gate else 0.0
            w = math.exp(-((1.0 - v) ** 2) / sigma) * s[j]
            den += w
            num = [num[c] + w * b[j][c] for c in range(4)]
        out_idx.append(order[i])
        out_boxes.append([x / den for x in num])
    if max_detections > 0:
        out_idx, out_boxes = out_idx[:max_detections], out_boxes[:max_detections]
    return out_idx, out_boxes


# ---------------------------------------------------------------------------------------------
# pairwise overlaps


def test_pairwise_iou_diou_matches_torchvision():
    boxes, _, _ = random_candidates(0, n_min=30, n_max=30)
    other, _, _ = random_candidates(1, n_min=20, n_max=20)
    iou = pairwise_iou_diou(boxes, other, metric="iou")
    torch.testing.assert_close(iou, box_iou(boxes, other), rtol=1e-5, atol=1e-6)
    diou = pairwise_iou_diou(boxes, other, metric="diou", beta=1.0)
    torch.testing.assert_close(diou, distance_box_iou(boxes, other), rtol=1e-5, atol=1e-6)
    diou08 = pairwise_iou_diou(boxes[:5], other[:4], metric="diou", beta=0.8)
    expected = [[py_diou(a, b, 0.8) for b in other[:4].tolist()] for a in boxes[:5].tolist()]
    torch.testing.assert_close(diou08, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    self_diou = pairwise_iou_diou(boxes, boxes, metric="diou").diagonal()
    torch.testing.assert_close(self_diou, torch.ones(len(boxes)))


# ---------------------------------------------------------------------------------------------
# Cluster-NMS == greedy NMS


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.6, 0.7])
def test_cluster_nms_iou_equals_torchvision_batched_nms(threshold):
    for seed in range(50):
        boxes, scores, classes = random_candidates(seed)
        keep = cluster_nms(boxes, scores, classes, threshold, metric="iou")
        expected = batched_nms(boxes, scores, classes, threshold)
        assert keep.dtype == torch.int64
        assert keep.tolist() == expected.tolist(), f"seed {seed}"


@pytest.mark.parametrize("threshold,beta", [(0.3, 0.8), (0.6, 0.8), (0.5, 1.0), (0.7, 0.6)])
def test_cluster_nms_diou_equals_greedy_diou_nms(threshold, beta):
    for seed in range(20):
        boxes, scores, classes = random_candidates(100 + seed, n_max=100)
        keep = cluster_nms(boxes, scores, classes, threshold, metric="diou", beta=beta)
        expected = greedy_diou_nms(boxes, scores, classes, threshold, beta)
        assert keep.tolist() == expected, f"seed {seed}"


def test_voting_false_equals_cluster_diou_nms_and_returns_original_boxes():
    for seed in range(20):
        boxes, scores, classes = random_candidates(200 + seed)
        keep, out = voting_cluster_diou_nms(
            boxes, scores, classes, 0.6, voting=False, max_detections=0
        )
        expected = cluster_nms(boxes, scores, classes, 0.6, metric="diou", beta=0.8)
        assert keep.tolist() == expected.tolist(), f"seed {seed}"
        assert torch.equal(out, boxes[keep])


# ---------------------------------------------------------------------------------------------
# score voting


@pytest.mark.parametrize("seed", range(8))
def test_voting_matches_official_per_box_reference(seed):
    boxes, scores, classes = random_candidates(
        300 + seed, n_min=10, n_max=60, max_classes=3, jitter=6.0
    )
    keep, out = voting_cluster_diou_nms(boxes, scores, classes, 0.6)
    ref_idx, ref_boxes = official_voting_reference(boxes, scores, classes, 0.6)
    assert keep.tolist() == ref_idx
    torch.testing.assert_close(out, torch.tensor(ref_boxes), rtol=1e-4, atol=1e-3)


def test_voting_reference_with_other_parameters():
    # one class: with sigma = 0.1 the official weight of another class's box, e^-10 * s_j, is
    # no longer negligible (the documented deviation), so the comparison needs a single class
    boxes, scores, classes = random_candidates(400, n_min=40, n_max=40, max_classes=1, jitter=8.0)
    kwargs = dict(beta=1.0, vote_gate=0.5, vote_sigma=0.1, max_detections=5)
    keep, out = voting_cluster_diou_nms(boxes, scores, classes, 0.4, **kwargs)
    ref_idx, ref_boxes = official_voting_reference(
        boxes, scores, classes, 0.4, beta=1.0, gate=0.5, sigma=0.1, max_detections=5
    )
    assert keep.tolist() == ref_idx and len(ref_idx) == 5
    torch.testing.assert_close(out, torch.tensor(ref_boxes), rtol=1e-4, atol=1e-3)
    assert (out - boxes[keep]).abs().max() > 0.1  # voting moved some boxes


def test_classes_stay_independent_beyond_4000_px():
    # class 1 at 9000 px and class 2 at 5000 px: shifted by 4000 * class they coincide
    boxes = torch.tensor(
        [
            [9000.0, 9000.0, 9500.0, 9500.0],
            [5000.0, 5000.0, 5500.0, 5500.0],
            [9004.0, 9003.0, 9502.0, 9505.0],  # near-duplicate of box 0, class 1
            [5002.0, 4998.0, 5497.0, 5503.0],  # near-duplicate of box 1, class 2
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([1, 2, 1, 2])
    keep, out = voting_cluster_diou_nms(boxes, scores, classes, 0.6)
    assert keep.tolist() == [0, 1]
    # each kept box is voted only with its own near-duplicate, never with the other class
    for i, j in ((0, 2), (1, 3)):
        v = py_diou(boxes[i].tolist(), boxes[j].tolist(), 0.8)
        w = math.exp(-((1 - v) ** 2) / 0.025) * scores[j].item()
        expected = (scores[i] * boxes[i] + w * boxes[j]) / (scores[i] + w)
        torch.testing.assert_close(out[i], expected.float(), rtol=1e-6, atol=1e-3)
    assert cluster_nms(boxes, scores, classes, 0.6, metric="diou").tolist() == [0, 1]
    # the official 4000-px trick would let box 0 (class 1) suppress box 1 (class 2)
    ref_idx, _ = official_voting_reference(boxes, scores, classes, 0.6)
    assert ref_idx == [0]


# ---------------------------------------------------------------------------------------------
# hand-made cases


def test_identical_boxes_same_class_one_kept_and_averaged():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0], [10.0, 20.0, 110.0, 220.0]])
    scores = torch.tensor([0.6, 0.9])
    classes = torch.tensor([3, 3])
    keep, out = voting_cluster_diou_nms(boxes, scores, classes)
    assert keep.tolist() == [1]
    torch.testing.assert_close(out, boxes[:1])
    # slightly different boxes, DIoU > gate: weights score_i and exp(-(1-DIoU)^2/sigma)*score_j
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [2.0, 3.0, 101.0, 104.0]])
    scores = torch.tensor([0.9, 0.6])
    keep, out = voting_cluster_diou_nms(boxes, scores, classes)
    v = py_diou(boxes[0].tolist(), boxes[1].tolist(), 0.8)
    assert v > 0.7
    w1 = math.exp(-((1 - v) ** 2) / 0.025) * 0.6
    expected = [(0.9 * a + w1 * b) / (0.9 + w1) for a, b in zip(*boxes.tolist())]
    assert keep.tolist() == [0]
    torch.testing.assert_close(out[0], torch.tensor(expected), rtol=1e-6, atol=1e-4)


def test_suppressed_box_below_gate_does_not_vote():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [15.0, 10.0, 115.0, 110.0]])
    scores = torch.tensor([0.9, 0.8])
    classes = torch.tensor([0, 0])
    v = py_diou(boxes[0].tolist(), boxes[1].tolist(), 0.8)
    assert 0.5 < v < 0.7
    keep, out = voting_cluster_diou_nms(boxes, scores, classes, 0.5)
    assert keep.tolist() == [0]
    torch.testing.assert_close(out, boxes[:1], rtol=0, atol=1e-6)  # weight ~e^-40 * 0.8


def test_identical_boxes_different_classes_both_kept_unchanged():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0], [10.0, 20.0, 110.0, 220.0]])
    scores = torch.tensor([0.6, 0.9])
    classes = torch.tensor([0, 1])
    keep, out = voting_cluster_diou_nms(boxes, scores, classes)
    assert keep.tolist() == [1, 0]
    torch.testing.assert_close(out, boxes[[1, 0]], rtol=1e-6, atol=0)  # (s * b) / s
    assert cluster_nms(boxes, scores, classes, 0.5).tolist() == [1, 0]


def _disjoint(n):
    x = torch.arange(n, dtype=torch.float32) * 100.0
    boxes = torch.stack([x, x, x + 50.0, x + 50.0], dim=1)
    scores = torch.tensor([0.1 * ((3 * i) % n + 1) for i in range(n)])  # distinct, shuffled
    return boxes, scores, torch.zeros(n, dtype=torch.int64)


def test_max_candidates_keeps_only_top_scored():
    boxes, scores, classes = _disjoint(7)
    top3 = scores.argsort(descending=True)[:3].tolist()
    assert cluster_nms(boxes, scores, classes, 0.5, max_candidates=3).tolist() == top3
    keep, out = voting_cluster_diou_nms(boxes, scores, classes, max_candidates=3)
    assert keep.tolist() == top3
    torch.testing.assert_close(out, boxes[top3])


def test_max_detections_limit():
    boxes, scores, classes = _disjoint(10)
    by_score = scores.argsort(descending=True).tolist()
    keep, out = voting_cluster_diou_nms(boxes, scores, classes, max_detections=4)
    assert keep.tolist() == by_score[:4] and out.shape == (4, 4)
    for unlimited in (0, -1):
        keep, _ = voting_cluster_diou_nms(boxes, scores, classes, max_detections=unlimited)
        assert keep.tolist() == by_score


def test_empty_input():
    boxes = torch.zeros(0, 4, dtype=torch.float16)
    scores = torch.zeros(0)
    classes = torch.zeros(0, dtype=torch.int64)
    keep = cluster_nms(boxes, scores, classes, 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    keep, out = voting_cluster_diou_nms(boxes, scores, classes)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert out.shape == (0, 4) and out.dtype == torch.float16


def test_half_inputs_computed_in_float32_output_in_input_dtype():
    boxes, scores, classes = random_candidates(500, n_max=60, jitter=6.0)
    boxes = boxes.round()  # exactly representable in float16
    keep32, out32 = voting_cluster_diou_nms(boxes, scores, classes)
    keep16, out16 = voting_cluster_diou_nms(boxes.half(), scores, classes)
    assert out16.dtype == torch.float16 and keep16.tolist() == keep32.tolist()
    torch.testing.assert_close(out16, out32.half())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    boxes, scores, classes = random_candidates(600, jitter=6.0)
    keep, out = voting_cluster_diou_nms(boxes, scores, classes)
    keep_c, out_c = voting_cluster_diou_nms(boxes.cuda(), scores.cuda(), classes.cuda())
    assert keep_c.device.type == "cuda" and keep_c.tolist() == keep.tolist()
    torch.testing.assert_close(out_c.cpu(), out, rtol=1e-5, atol=1e-3)
    keep_iou = cluster_nms(boxes.cuda(), scores.cuda(), classes.cuda(), 0.5)
    assert keep_iou.tolist() == batched_nms(boxes, scores, classes, 0.5).tolist()


_B = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
_S = torch.tensor([0.9, 0.8])
_C = torch.tensor([0, 0])


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: cluster_nms(_B, _S, _C, 0.5, metric="giou"), "metric"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C, metric="ciou"), "metric"),
        (lambda: cluster_nms(_B, _S, _C, 1.5), "iou_threshold"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C, -0.1), "iou_threshold"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C, vote_sigma=0.0), "vote_sigma"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C, vote_sigma=-1.0), "vote_sigma"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C, vote_gate=1.5), "vote_gate"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C, beta=0.0), "beta"),
        (lambda: cluster_nms(_B[:, :3], _S, _C, 0.5), "boxes"),
        (lambda: cluster_nms(_B, _S[:1], _C, 0.5), "scores"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C[:1]), "classes"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C.float()), "classes"),
        (lambda: cluster_nms(_B, _S, _C, 0.5, max_candidates=0), "max_candidates"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C, max_candidates=0), "max_candidates"),
        (lambda: cluster_nms(_B, _S, _C, 0.5, max_iterations=0), "max_iterations"),
        (lambda: voting_cluster_diou_nms(_B, _S, _C, max_detections=2.5), "max_detections"),
        (lambda: pairwise_iou_diou(_B, _B, metric="giou"), "metric"),
    ],
)
def test_bad_arguments_raise_value_error(call, name):
    with pytest.raises(ValueError, match=name):
        call()
