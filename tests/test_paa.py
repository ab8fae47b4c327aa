"""PAA: the batched GMM against sklearn, candidate selection, the assignment against a per-box
loop in MMDetection's manner, the detector's losses and inference; LAD and soft labels."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import toy_batch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from sklearn import mixture as sklearn_mixture  # a test requirement (requirements.txt)

import lgdkd.modeling  # noqa: F401
from lgdkd.layers import fit_gmm_1d, focal_binary_kl, paa_score_voting
from lgdkd.modeling.matching.paa import (
    anchor_costs,
    gmm_split,
    paa_assign,
    preassign,
    select_candidates,
)


# ------------------------------------------------------------------------------- references
def _sklearn_gmm(costs):
    """MMDetection's per-box fit (covariance "full", float64): labels and log densities."""
    x = np.asarray(costs, dtype=np.float64).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm = sklearn_mixture.GaussianMixture(
            2,
            weights_init=[0.5, 0.5],
            means_init=[[x.min()], [x.max()]],
            precisions_init=np.ones((2, 1, 1)),
            covariance_type="full",
        ).fit(x)
    return gmm.predict(x), gmm.score_samples(x)


def _split_reference(sorted_costs, rule="mmdet"):
    """Positions kept among a box's candidates sorted by cost (MMDetection's
    gmm_separation_scheme; kkhoot/PAA for "original")."""
    n = len(sorted_costs)
    if n == 0:
        return []
    if n == 1:
        return [] if rule == "mmdet" else [0]
    comp, score = _sklearn_gmm(sorted_costs)
    fg = [j for j in range(n) if comp[j] == 0]
    if not fg:
        return [] if rule == "mmdet" else list(range(n))
    best = max(fg, key=lambda j: (score[j], -j))
    if rule == "mmdet":
        return [j for j in fg if j <= best]
    return list(range(best + 1))


def _random_cost_sets(seed, count):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        k = int(rng.integers(2, 46))
        if i % 3 == 0:
            a = k // 3 + 1
            x = np.concatenate([rng.normal(1.0, 0.3, a), rng.normal(4.0, 1.0, k - a)])
        elif i % 3 == 1:
            x = rng.uniform(2, 40, k)
        else:
            x = rng.gamma(2.0, 2.0, k)
        out.append(np.sort(x))
    return out


def _padded(sets):
    k = max(len(s) for s in sets)
    x = torch.zeros(len(sets), k, dtype=torch.float64)
    m = torch.zeros(len(sets), k, dtype=torch.bool)
    for i, s in enumerate(sets):
        x[i, : len(s)] = torch.as_tensor(s)
        m[i, : len(s)] = True
    return x, m


# -------------------------------------------------------------------------------------- GMM
def test_gmm_equals_sklearn_on_random_cost_sets():
    """Labels, log densities and the resulting positive sets equal sklearn's on 400 sets of
    2-45 costs (well separated, uniform, skewed), all fitted in one batched call."""
    sets = _random_cost_sets(0, 400)
    x, m = _padded(sets)
    gmm = fit_gmm_1d(x, m)
    labels, scores = gmm.predict(x), gmm.score_samples(x)
    assert bool(gmm.converged.all())
    for i, s in enumerate(sets):
        comp, score = _sklearn_gmm(s)
        n = len(s)
        assert labels[i, :n].tolist() == comp.tolist(), i
        assert np.allclose(scores[i, :n].numpy(), score, rtol=1e-7, atol=1e-9), i
    box_ids = torch.cat([torch.full((len(s),), i) for i, s in enumerate(sets)])
    costs = torch.cat([torch.as_tensor(s) for s in sets])
    got = gmm_split(box_ids, costs, len(sets))
    start = 0
    for i, s in enumerate(sets):
        kept = got[start : start + len(s)].nonzero().flatten().tolist()
        assert kept == _split_reference(s), i
        start += len(s)


def test_gmm_near_constant_costs_do_not_crash():
    """Costs equal up to float32 rounding ("ill-defined empirical covariance" in MMDetection
    #4152 with covariance 'diag') and exactly equal costs: finite fits, sklearn's positives
    but for exact ties, and for exactly equal costs the first candidate only."""
    rng = np.random.default_rng(1)
    sets = []
    for i in range(200):
        k = int(rng.integers(2, 46))
        base = float(rng.uniform(2, 40))
        sets.append(np.sort((base + rng.integers(0, 3, k) * 1e-3).astype(np.float32)))
    sets.append(np.full(9, 7.5, dtype=np.float32))
    sets.append(np.array([3.0, 3.0], dtype=np.float32))
    x, m = _padded([s.astype(np.float64) for s in sets])
    gmm = fit_gmm_1d(x, m)
    for t in (gmm.means, gmm.variances, gmm.weights):
        assert torch.isfinite(t).all()
    box_ids = torch.cat([torch.full((len(s),), i) for i, s in enumerate(sets)])
    costs = torch.cat([torch.as_tensor(s, dtype=torch.float64) for s in sets])
    kept = gmm_split(box_ids, costs, len(sets))
    # against sklearn ("full", float64): equal but for exact ties, which the last bits of
    # floating point decide in either implementation (two identical components, or two
    # candidates of equal density)
    agree, start = 0, 0
    for s in sets[:-2]:
        got = kept[start : start + len(s)].nonzero().flatten().tolist()
        agree += got == _split_reference(s.astype(np.float64))
        start += len(s)
    assert agree >= 195, agree
    first_of_constant = int(sum(len(s) for s in sets[:-2]))
    assert kept[first_of_constant : first_of_constant + 9].tolist() == [True] + [False] * 8
    assert kept[-2:].tolist() == [True, False]


def test_gmm_split_degenerate_boxes_follow_the_rule():
    """0 candidates, 1 candidate, and two boxes in one call, for both rules."""
    box_ids = torch.tensor([0, 2, 2, 2, 2, 2, 2])
    costs = torch.tensor([5.0, 1.0, 1.1, 1.2, 8.0, 8.2, 8.1])
    mmdet = gmm_split(box_ids, costs, 3, rule="mmdet")
    orig = gmm_split(box_ids, costs, 3, rule="original")
    # box 2: component 0 = {1.0, 1.1, 1.2}, densest at 1.1 -> positives up to 1.1
    assert _split_reference([1.0, 1.1, 1.2, 8.0, 8.1, 8.2]) == [0, 1]
    assert mmdet.tolist() == [False, True, True, False, False, False, False]
    assert orig.tolist() == [True, True, True, False, False, False, False]
    assert gmm_split(box_ids[:0], costs[:0], 3).numel() == 0


# ------------------------------------------------------------------------------- candidates
def test_candidates_are_the_lowest_costs_per_box_and_level():
    gen = torch.Generator().manual_seed(0)
    box_ids = torch.randint(0, 4, (300,), generator=gen)
    levels = torch.randint(0, 3, (300,), generator=gen)
    costs = torch.rand(300, generator=gen)
    got = select_candidates(box_ids, levels, costs, topk=9)
    expected = torch.zeros(300, dtype=torch.bool)
    for b in range(4):
        for lv in range(3):
            idx = ((box_ids == b) & (levels == lv)).nonzero().flatten()
            order = costs[idx].argsort()
            expected[idx[order[:9]]] = True
    assert torch.equal(got, expected)


def test_preassign_low_quality_rules_on_hand_made_boxes():
    """Anchors a0 = [0, 0, 10, 10], a1 = [20, 0, 30, 10], a2 = a0 but on padding (invalid).
    Box 0 = [0, 0, 10, 15] (IoU 0.67 with a0), box 1 = [0, 0, 10, 40] (IoU 0.25 with a0): a0 is
    the best anchor of both and box 0 is a0's best box; "mmdet" gives a0 to the later box 1,
    "original" keeps box 0. Box 2 = [29, 0, 60, 10] overlaps only a1, by IoU 0.025 < 0.1: a1 is
    its best anchor, so it is matched anyway. The zero-area box 3 gets nothing."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 15], [0, 0, 10, 40], [29, 0, 60, 10], [50, 50, 50, 60]])
    valid = torch.tensor([True, True, False])
    assert preassign(anchors, boxes, valid, 0.1, "mmdet").tolist() == [1, 2, -1]
    assert preassign(anchors, boxes, valid, 0.1, "original").tolist() == [0, 2, -1]
    # without the low-quality rule box 2 would be lost: IoU 0.025 is below the threshold
    assert preassign(anchors, boxes[2:3], valid, 0.1).tolist() == [-1, 0, -1]
    assert preassign(anchors, boxes[:0], valid).tolist() == [-1, -1, -1]


# ------------------------------------------------------------------------ whole assignment
def _assign_reference(anchors, counts, valid, gt, logits, boxes, topk=9, rule="mmdet"):
    """paa_assign for one image written per box with Python loops (MMDetection's order)."""
    pre = preassign(anchors, gt.gt_boxes.tensor, valid, 0.1, "mmdet").tolist()
    level = []
    for lv, n in enumerate(counts):
        level += [lv] * n
    matched = [-1] * len(anchors)
    for g in range(len(gt)):
        idx = [a for a in range(len(anchors)) if pre[a] == g]
        if not idx:
            continue
        cost = anchor_costs(
            logits[idx],
            boxes[idx],
            gt.gt_classes[[g] * len(idx)],
            gt.gt_boxes.tensor[[g] * len(idx)],
        ).tolist()
        cands = []
        for lv in range(len(counts)):
            on = sorted([(cost[j], a) for j, a in enumerate(idx) if level[a] == lv])
            cands += on[:topk]
        cands.sort()
        keep = _split_reference([c for c, _ in cands], rule)
        for j in keep:
            matched[cands[j][1]] = g
    return matched


def _toy_image(gen, h=96, w=128, num=4):
    xy = torch.rand(num, 2, generator=gen) * torch.tensor([w - 30.0, h - 30.0])
    wh = 8 + torch.rand(num, 2, generator=gen) * 50
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], dim=1))
    inst.gt_classes = torch.randint(0, 3, (num,), generator=gen)
    return inst


@pytest.mark.parametrize("rule", ["mmdet", "original"])
def test_paa_assign_equals_the_per_box_loop(rule):
    from lgdkd.modeling.matching.atss import grid_anchors

    strides = [8, 16, 32]
    sizes = [(12, 16), (6, 8), (3, 4)]
    anchors, counts = grid_anchors(sizes, strides, 4.0)
    gen = torch.Generator().manual_seed(3)
    gts = [_toy_image(gen, num=n) for n in (4, 1, 0, 6)]
    n, r = len(gts), anchors.shape[0]
    valid = torch.ones(n, r, dtype=torch.bool)
    valid[1, counts[0] - 40 : counts[0]] = False
    logits = torch.randn(n, r, 3, generator=gen)
    boxes = anchors[None] + torch.randn(n, r, 4, generator=gen) * 6
    targets = paa_assign(anchors, counts, valid, gts, logits, boxes, 3, rule=rule)
    for i, gt in enumerate(gts):
        expected = _assign_reference(anchors, counts, valid[i], gt, logits[i], boxes[i], rule=rule)
        assert targets.matched[i].tolist() == expected, i
    pos = targets.positive
    assert pos.any() and not pos[2].any()
    assert (targets.labels[~pos] == 3).all()
    for i, gt in enumerate(gts):
        m = targets.matched[i][pos[i]]
        assert torch.equal(targets.labels[i][pos[i]], gt.gt_classes[m])
        assert torch.equal(targets.matched_boxes[i][pos[i]], gt.gt_boxes.tensor[m])


# -------------------------------------------------------------------------------- detector
def _paa(cfg):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(cfg)


def test_paa_losses_equal_the_formulas(tiny_cfg):
    """Focal / max(P, N), IoU-weighted GIoU / sum IoU (or GIoU / P) and IoU BCE / P recomputed
    from the recorded targets."""
    from fvcore.nn import giou_loss, sigmoid_focal_loss

    from lgdkd.modeling.detectors.head_parts import aligned_iou

    cfg = tiny_cfg("paa")
    model = _paa(cfg)
    model.train()
    batch = toy_batch(cfg)
    images = model.preprocess_image(batch)
    gt = [x["instances"] for x in batch]
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    preds = model.head(feats)
    with EventStorage(0):
        targets = model.label_anchors(feats, gt, preds)
        losses = model.losses(targets, preds)
        model.box_loss_iou_weighted = False
        unweighted = model.losses(targets, preds)
    logits, deltas, ious = model.flatten_predictions(preds)
    pos, valid = targets.positive, targets.valid
    num_pos = float(pos.sum())
    assert num_pos > 0
    onehot = torch.nn.functional.one_hot(targets.labels, 3)[..., :2].float()
    cls = sigmoid_focal_loss(logits[valid], onehot[valid], 0.25, 2.0, "sum") / max(num_pos, 4)
    anchors = targets.anchors[None].expand(4, -1, -1)[pos]
    box = model.decode(deltas[pos], anchors)
    iou = aligned_iou(box.detach(), targets.matched_boxes[pos])
    giou = giou_loss(box, targets.matched_boxes[pos], reduction="none")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(ious[pos], iou, reduction="sum")
    assert losses["loss_cls"].item() == pytest.approx(cls.item(), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(
        1.3 * ((giou * iou).sum() / iou.sum()).item(), rel=1e-5
    )
    assert unweighted["loss_bbox"].item() == pytest.approx(
        1.3 * giou.sum().item() / num_pos, rel=1e-5
    )
    assert losses["loss_iou"].item() == pytest.approx(0.5 * bce.item() / num_pos, rel=1e-5)


def test_paa_image_without_boxes_and_inference(tiny_cfg):
    cfg = tiny_cfg("paa")
    model = _paa(cfg)
    batch = toy_batch(cfg, n=1, start=0)  # toy image 0 has no object
    assert len(batch[0]["instances"]) == 0
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"] == 0 and losses["loss_iou"] == 0 and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    assert model.head.bbox_pred.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(toy_batch(cfg, n=2, start=1))
    inst = out[0]["instances"]
    assert len(inst) > 0 and len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    s = inst.scores
    assert ((s > 0) & (s <= 1)).all()


def test_score_voting_formula_and_empty_input():
    kept = torch.tensor([[0.0, 0, 10, 10]])
    cand = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [0, 0, 10, 10], [30, 30, 40, 40]])
    scores = torch.tensor([0.9, 0.5, 0.7, 0.8])
    classes = torch.tensor([0, 0, 1, 0])
    got = paa_score_voting(kept, torch.tensor([0]), cand, scores, classes)
    iou = 81.0 / (100 + 100 - 81)
    w = torch.tensor([0.9, math.exp(-((1 - iou) ** 2) / 0.025) * 0.5])
    expected = (w[:, None] * cand[:2]).sum(0) / w.sum()
    assert torch.allclose(got[0], expected)
    empty = torch.zeros(0, 4)
    assert paa_score_voting(
        empty, torch.zeros(0, dtype=torch.long), cand, scores, classes
    ).shape == (
        0,
        4,
    )


# ------------------------------------------------------------------------------- LAD / KD
def _teacher_files(tiny_cfg, tmp_path, seed=1, **overrides):
    from detectron2.modeling import build_model

    from lgdkd.data import apply_num_classes

    tcfg = tiny_cfg("paa")
    for k, v in overrides.items():
        tcfg.merge_from_list([k, v])
    apply_num_classes(tcfg)
    torch.manual_seed(seed)
    teacher = build_model(tcfg)
    (tmp_path / "teacher.yaml").write_text(tcfg.dump())
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    return teacher


def _lad_cfg(tiny_cfg, tmp_path, assigner="LADAssigner", distillers=(), **overrides):
    _teacher_files(tiny_cfg, tmp_path, **overrides)
    cfg = tiny_cfg("paa")
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "PAA"
    cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(tmp_path / "teacher.yaml")
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "teacher.pth")
    cfg.MODEL.DISTILL.ASSIGNER.NAME = assigner
    cfg.MODEL.DISTILL.DISTILLERS = list(distillers)
    cfg.MODEL.PAA.BOX_LOSS_IOU_WEIGHTED = False
    return cfg


def test_lad_with_the_student_as_teacher_gives_the_students_own_targets(tiny_cfg, tmp_path):
    from detectron2.modeling import build_model

    cfg = _lad_cfg(tiny_cfg, tmp_path)
    model = build_model(cfg)
    model.student.load_state_dict(torch.load(tmp_path / "teacher.pth")["model"])
    model.eval()  # the tiny backbone has BatchNorm: the (eval-mode) teacher's statistics
    batch = toy_batch(cfg)
    adapter = model._adapter
    with EventStorage(0):
        images, gt = adapter.preprocess(model.student, batch)
        student = adapter.run(model.student, images, gt)
        teacher = model.teacher(batch, student)
        assignment = model.assigner(student, teacher)
        own = model.student.label_anchors(
            [student.features[f] for f in student.head_in_features], gt, student.predictions
        )
        student.targets = assignment.targets
        losses = adapter.task_losses(model.student, student)
    lad = assignment.targets
    assert own.positive.any()
    assert torch.equal(lad.matched, own.matched) and torch.equal(lad.labels, own.labels)
    assert all(torch.isfinite(v) for v in losses.values())


def test_lad_student_trains_on_the_teachers_targets(tiny_cfg, tmp_path):
    """Another teacher: the student's loss uses the teacher's positives, no gradient reaches
    the teacher, and an image without boxes passes."""
    from detectron2.modeling import build_model

    cfg = _lad_cfg(tiny_cfg, tmp_path)
    model = build_model(cfg)
    model.train()
    batch = toy_batch(cfg, n=3, start=0)
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_iou"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not any(p.requires_grad for p in model.teacher.parameters())


@pytest.mark.parametrize(
    "override, message",
    [
        (("MODEL.PAA.ANCHOR_SCALE", "8.0"), "ANCHOR_SCALE"),
        (("MODEL.PAA.IN_FEATURES", "['p3', 'p4', 'p5', 'p6']"), "IN_FEATURES"),
    ],
)
def test_lad_teacher_with_another_anchor_layout_is_refused(tiny_cfg, tmp_path, override, message):
    from detectron2.modeling import build_model

    cfg = _lad_cfg(tiny_cfg, tmp_path, **{override[0]: override[1]})
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_focal_binary_kl_equals_the_official_formula():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(50, generator=gen) * 3
    t = torch.rand(50, generator=gen)
    t[:5] = 0.0
    t[5:10] = 1.0
    got = focal_binary_kl(z, t, gamma=0.5)
    p = z.double().sigmoid()
    td = t.double()
    kl_p = torch.where(td > 0, td * (td.clamp(min=1e-300).log() - p.log()), torch.zeros_like(td))
    kl_n = torch.where(
        td < 1, (1 - td) * ((1 - td).clamp(min=1e-300).log() - (1 - p).log()), torch.zeros_like(td)
    )
    expected = ((td - p) ** 2 + 1e-6) ** 0.25 * (kl_p + kl_n)
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-7)
    assert focal_binary_kl(z, z.sigmoid()).abs().max() < 1e-3 * 1e-3**0.25 + 1e-6


def test_soft_label_is_zero_when_the_teacher_equals_the_student(tiny_cfg, tmp_path):
    from detectron2.modeling import build_model

    cfg = _lad_cfg(tiny_cfg, tmp_path, assigner="", distillers=["SoftLabelDistiller"])
    model = build_model(cfg)
    model.train()
    batch = toy_batch(cfg)
    adapter = model._adapter
    with EventStorage(0):
        images, gt = adapter.preprocess(model.student, batch)
        student = adapter.run(model.student, images, gt)
        teacher = model.teacher(batch, student)
        d = model.distillers[0]
        other = d(student, teacher)
        same = d(student, student)
    assert other["loss_distill_soft_cls"] > 0
    # identical predictions: KL 0 (the (t-p)^2 + 1e-6 factor does not matter) and GIoU 0
    assert all(abs(v.item()) < 1e-5 for v in same.values()), same


def test_solad_and_pure_soft_label_losses(tiny_cfg, tmp_path):
    """SoLAD = LAD assigner + soft labels from one teacher pass; TASK_LOSS_WEIGHT 0 keeps only
    the soft-label terms (the paper's Soft-Label rows)."""
    from detectron2.modeling import build_model

    cfg = _lad_cfg(tiny_cfg, tmp_path, distillers=["SoftLabelDistiller"])
    cfg.MODEL.DISTILL.SOFT_LABEL.CLS_WEIGHT = 2.0
    cfg.MODEL.DISTILL.SOFT_LABEL.MIN_IOU = 0.5
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(toy_batch(cfg))
    assert {"loss_cls", "loss_bbox", "loss_iou", "loss_distill_soft_cls"} <= set(losses)
    cfg.MODEL.DISTILL.ASSIGNER.NAME = ""
    cfg.MODEL.DISTILL.TASK_LOSS_WEIGHT = 0.0
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(toy_batch(cfg))
    assert set(losses) == {
        "loss_distill_soft_cls",
        "loss_distill_soft_iou",
        "loss_distill_soft_box",
    }


# ------------------------------------------------------------------------------------ CoLAD
def test_colad_switch_picks_the_network_with_the_larger_std_over_mean():
    from lgdkd.modeling.assigners.colad import colad_choose_costs

    # group 0: N1 costs 1, 2, 3 (cv 0.5), N2 costs 2, 2.1, 2.2 (cv 0.048) -> N1
    # group 1: N1 costs 4, 4, 4.1 (cv 0.014), N2 costs 1, 5, 9 (cv 0.8) -> N2
    # group 2: one pair, N1 3.0 vs N2 2.5 -> N2 (lower mean); group 3: one pair, 1.0 vs 1.5 -> N1
    s = torch.tensor([1.0, 2, 3, 4, 4, 4.1, 3.0, 1.0])
    t = torch.tensor([2.0, 2.1, 2.2, 1, 5, 9, 2.5, 1.5])
    groups = torch.tensor([7, 7, 7, 3, 3, 3, 11, 20])  # any ids
    costs, use_t, stats = colad_choose_costs(s, t, groups)
    assert costs.tolist() == pytest.approx([1, 2, 3, 1, 5, 9, 2.5, 1.0])
    # unique ids sorted: 3 (N2), 7 (N1), 11 (N2), 20 (N1)
    assert use_t.tolist() == [True, False, True, False]
    assert stats["t_ratio"] == 0.5
    assert stats["s_std"] == pytest.approx((1.0 + float(torch.tensor([4, 4, 4.1]).std())) / 2)


def _colad_cfg(tiny_cfg, tmp_path):
    tcfg = tiny_cfg("paa")
    tcfg.MODEL.FPN.OUT_CHANNELS = 16  # a different network with the same anchors
    (tmp_path / "n2.yaml").write_text(tcfg.dump())
    cfg = tiny_cfg("paa")
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "PAA"
    cfg.MODEL.DISTILL.TEACHER.NAME = "CoLearningTeacher"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(tmp_path / "n2.yaml")
    cfg.MODEL.DISTILL.ASSIGNER.NAME = "CoLADAssigner"
    cfg.MODEL.PAA.BOX_LOSS_IOU_WEIGHTED = False
    return cfg


def test_colad_step_trains_both_networks_on_one_assignment(tiny_cfg, tmp_path):
    from detectron2.modeling import build_model

    cfg = _colad_cfg(tiny_cfg, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    assert model.teacher.training  # trained, not frozen
    batch = toy_batch(cfg, n=3, start=0)  # image 0 has no box
    with EventStorage(0) as storage:
        losses = model(batch)
        latest = storage.latest()
    assert {"loss_cls", "loss_bbox", "loss_iou", "loss_cls_t", "loss_bbox_t", "loss_iou_t"} == set(
        losses
    )
    assert 0.0 <= latest["paa/colad_t_ratio"][0] <= 1.0
    sum(losses.values()).backward()
    assert model.student.head.bbox_pred.weight.grad.abs().sum() > 0
    assert model.teacher.detector.head.bbox_pred.weight.grad.abs().sum() > 0
    # the shared targets: the student's and N2's losses read the same DenseTargets
    adapter = model._adapter
    with EventStorage(0):
        images, gt = adapter.preprocess(model.student, batch)
        s_out = adapter.run(model.student, images, gt)
        t_out = model.teacher(batch, s_out)
        assignment = model.assigner(s_out, t_out)
        model.teacher.losses(model.student, adapter, s_out, t_out, assignment)
    assert assignment.targets is not None and t_out.targets is assignment.targets
    # with N2 = N1 (same weights, same costs) the switch keeps N1 on ties of std/mean and the
    # shared assignment is the student's own PAA assignment
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(tmp_path / "n1.yaml")
    (tmp_path / "n1.yaml").write_text(tiny_cfg("paa").dump())
    model = build_model(cfg)
    model.teacher.detector.load_state_dict(model.student.state_dict())
    model.eval()
    with EventStorage(0):
        images, gt = adapter.preprocess(model.student, batch)
        s_out = adapter.run(model.student, images, gt)
        t_out = model.teacher(batch, s_out)
        shared = model.assigner(s_out, t_out).targets
        own = model.student.label_anchors(
            [s_out.features[f] for f in s_out.head_in_features], gt, s_out.predictions
        )
    assert torch.equal(shared.matched, own.matched)


def test_colad_needs_a_co_learned_paa_network(tiny_cfg, tmp_path):
    from detectron2.modeling import build_model

    cfg = _lad_cfg(tiny_cfg, tmp_path, assigner="CoLADAssigner")
    with pytest.raises(ValueError, match="CoLearningTeacher"):
        build_model(cfg)
    cfg = _colad_cfg(tiny_cfg, tmp_path)
    bad = tiny_cfg("paa")
    bad.MODEL.PAA.ANCHOR_SCALE = 6.0
    (tmp_path / "n2.yaml").write_text(bad.dump())
    with pytest.raises(ValueError, match="ANCHOR_SCALE"):
        build_model(cfg)
    cfg = _lad_cfg(tiny_cfg, tmp_path)
    cfg.MODEL.DISTILL.EVAL_NETWORK = "teacher"
    with pytest.raises(ValueError, match="EVAL_NETWORK"):
        build_model(cfg)


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_paa_lad_colad_train_eval_resume_export(tiny_cfg, run_train_net, tmp_path):
    """train_net.py: a PAA teacher; a LAD student from it (evaluated, exported, loads strictly
    into a plain PAA); CoLAD with the student's network and a co-learned one, where --resume
    restores both networks exactly, EVAL_NETWORK picks the evaluated one and the second
    network exports and loads strictly too."""
    from detectron2.modeling import build_model

    from lgdkd.config import get_cfg
    from lgdkd.export import export_student, export_teacher

    tcfg = tiny_cfg("paa")
    tcfg.SOLVER.MAX_ITER = 3
    (tmp_path / "t.yaml").write_text(tcfg.dump())
    run_train_net("--config-file", tmp_path / "t.yaml", "OUTPUT_DIR", tmp_path / "teacher")

    cfg = tiny_cfg("paa")
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "PAA"
    cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(tmp_path / "t.yaml")
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "teacher" / "model_final.pth")
    cfg.MODEL.DISTILL.ASSIGNER.NAME = "LADAssigner"
    cfg.MODEL.PAA.BOX_LOSS_IOU_WEIGHTED = False
    cfg.SOLVER.MAX_ITER = 3
    (tmp_path / "lad.yaml").write_text(cfg.dump())
    log = run_train_net("--config-file", tmp_path / "lad.yaml", "OUTPUT_DIR", tmp_path / "lad")
    assert "copypaste" in log
    assert "paa/positives" in (tmp_path / "lad" / "metrics.json").read_text()
    w, c = export_student(cfg, str(tmp_path / "lad" / "model_final.pth"), str(tmp_path / "ex"))
    scfg = get_cfg()
    scfg.merge_from_file(c)
    assert scfg.MODEL.META_ARCHITECTURE == "PAA"
    build_model(scfg).load_state_dict(torch.load(w, weights_only=False)["model"], strict=True)

    cfg = _colad_cfg(tiny_cfg, tmp_path)
    cfg.MODEL.DISTILL.EVAL_NETWORK = "teacher"
    cfg.MODEL.DISTILL.TEACHER.EVAL = True
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.WARMUP_ITERS = 0
    (tmp_path / "colad.yaml").write_text(cfg.dump())
    out, resumed = tmp_path / "colad", tmp_path / "colad_resumed"
    log = run_train_net("--config-file", tmp_path / "colad.yaml", "OUTPUT_DIR", out)
    assert "loss_cls_t" in log and log.count("copypaste: AP,") == 2
    run_train_net(
        "--config-file", tmp_path / "colad.yaml", "OUTPUT_DIR", resumed, "SOLVER.MAX_ITER", 2
    )
    at_2 = torch.load(resumed / "model_final.pth", weights_only=False)["model"]
    run_train_net("--config-file", tmp_path / "colad.yaml", "--resume", "OUTPUT_DIR", resumed)
    a = torch.load(out / "model_final.pth", weights_only=False)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=False)["model"]
    assert any(k.startswith("teacher.detector.") for k in a)
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    key = "teacher.detector.head.bbox_pred.weight"
    assert not torch.equal(at_2[key], a[key])  # the second network trains
    w, c = export_teacher(cfg, str(out / "model_final.pth"), str(tmp_path / "ex_t"))
    tcfg = get_cfg()
    tcfg.merge_from_file(c)
    assert tcfg.MODEL.FPN.OUT_CHANNELS == 16
    build_model(tcfg).load_state_dict(torch.load(w, weights_only=False)["model"], strict=True)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.PAA.SPLIT_RULE", "sklearn", "SPLIT_RULE"),
        ("MODEL.PAA.LOW_QUALITY", "none", "LOW_QUALITY"),
        ("MODEL.PAA.IN_FEATURES", ["p3", "p9"], "IN_FEATURES"),
        ("MODEL.PAA.BBOX_REG_WEIGHTS", (1.0, 1.0), "BBOX_REG_WEIGHTS"),
    ],
)
def test_bad_paa_keys_are_explained(tiny_cfg, key, value, message):
    from detectron2.modeling import build_model

    cfg = tiny_cfg("paa")
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        build_model(cfg)
