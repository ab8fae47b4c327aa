"""GFocal (V1/V2), ATSS, LD's regions and the LD distiller."""

import itertools
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, toy_batch

import lgdkd.modeling  # noqa: F401
from lgdkd.modeling.matching.atss import (
    atss_assign,
    grid_anchors,
    pairwise_overlap,
    valid_anchor_mask,
    vlr_region,
)


# ------------------------------------------------------------------------------- references
def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _atss_reference(anchors, counts, gts, valid, topk=9):
    """ATSS written per box with Python loops (MMDetection's steps)."""
    anchors, gts, valid = anchors.tolist(), gts.tolist(), valid.tolist()
    centres = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors]
    best = [(-math.inf, -1)] * len(anchors)
    for g, box in enumerate(gts):
        gc = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        cands, start = [], 0
        for n in counts:
            idx = [i for i in range(start, start + n) if valid[i]]
            idx.sort(key=lambda i: (math.dist(centres[i], gc), i))
            cands += idx[: min(topk, len(idx))]
            start += n
        ious = [_iou(anchors[i], box) for i in cands]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((x - mean) ** 2 for x in ious) / max(len(ious) - 1, 1))
        for i, v in zip(cands, ious):
            cx, cy = centres[i]
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if v >= mean + std and inside and v > best[i][0]:
                best[i] = (v, g)
    return [b[1] for b in best]


def _layout(image=(64, 96), strides=(8, 16, 32), scale=4.0):
    sizes = [(math.ceil(image[0] / s), math.ceil(image[1] / s)) for s in strides]
    anchors, counts = grid_anchors(sizes, list(strides), scale)
    return anchors, counts, sizes


def _random_boxes(gen, n, h, w):
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - 8.0, h - 8.0])
    wh = 4 + torch.rand(n, 2, generator=gen) * 40
    return torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], dim=1)


# ------------------------------------------------------------------------------------- ATSS
def test_atss_equals_per_box_reference_on_random_boxes():
    anchors, counts, sizes = _layout()
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        gts = _random_boxes(gen, 1 + trial % 5, 64, 96)
        valid = valid_anchor_mask((50, 80) if trial % 2 else (64, 96), sizes, [8, 16, 32])
        got = atss_assign(anchors, counts, gts, valid, topk=9).matched.tolist()
        assert got == _atss_reference(anchors, counts, gts, valid), trial


def test_atss_near_tie_at_coco_coordinates():
    """Two anchors 10.000 and 10.002 px from a box centre near (1000, 700): the distance must be
    exact enough to keep the nearer one (torch.cdist's float32 matrix-product path, which it
    takes from 25 points on, makes them tie and picked the farther one). The candidates decide
    the IoU threshold, so float32 must give the float64 result."""
    c = torch.tensor([1000.3, 700.7])
    near = c + torch.tensor([[0.0, 0], [2, 1], [-2, 1], [1, -3], [-1, 3], [3, 3], [-3, -3], [4, 0]])
    nearer, farther = c + torch.tensor([10.0, 0.0]), c + torch.tensor([0.0, 10.002])
    far = c + torch.stack([torch.arange(30.0) * 7 - 105, torch.full((30,), 60.0)], 1)
    points = torch.cat([near, nearer[None], farther[None], far])
    anchors = torch.cat([points - 32, points + 32], 1)
    gt = torch.tensor([[c[0] - 70, c[1] - 30, c[0] + 70, c[1] + 30]])
    single = atss_assign(anchors, [len(anchors)], gt, topk=9)
    double = atss_assign(anchors.double(), [len(anchors)], gt.double(), topk=9)
    torch.testing.assert_close(single.thresholds.double(), double.thresholds.double())
    assert torch.equal(single.matched, double.matched)


def test_atss_hand_made_boxes():
    anchors, counts, sizes = _layout()
    valid = torch.ones(len(anchors), dtype=torch.bool)
    # a 3x3 box, smaller than every anchor (side 32 on stride 8), around the anchor centre (32, 32)
    res = atss_assign(anchors, counts, torch.tensor([[31.0, 31.0, 34.0, 34.0]]), valid)
    positives = (res.matched >= 0).nonzero().flatten().tolist()
    assert positives and all(
        anchors[i, :2].add(anchors[i, 2:]).div(2).tolist() == [32.0, 32.0] for i in positives
    )
    # a 3x3 box containing no anchor centre: no positive at all
    res = atss_assign(anchors, counts, torch.tensor([[33.0, 33.0, 36.0, 36.0]]), valid)
    assert (res.matched < 0).all()
    # image without boxes: all negative; thresholds empty
    res = atss_assign(anchors, counts, torch.zeros(0, 4), valid)
    assert (res.matched < 0).all() and res.thresholds.numel() == 0
    # anchors on the padding are never positive
    box = torch.tensor([[40.0, 24.0, 90.0, 60.0]])
    valid = valid_anchor_mask((64, 48), sizes, [8, 16, 32])
    res = atss_assign(anchors, counts, box, valid)
    assert not (res.matched[~valid] >= 0).any()


def test_valid_anchor_mask_follows_the_image_padded_to_the_divisor():
    sizes, strides = [(8, 12), (4, 6)], [8, 16]
    m = valid_anchor_mask((40, 50), sizes, strides, size_divisibility=32).split([96, 24])
    # padded to 64 x 64: ceil(64/8) = 8 rows, 8 columns on stride 8; 4 x 4 on stride 16
    assert m[0].view(8, 12)[:, :8].all() and not m[0].view(8, 12)[:, 8:].any()
    assert m[1].view(4, 6)[:, :4].all() and not m[1].view(4, 6)[:, 4:].any()


def test_vlr_region_equals_per_anchor_reference():
    anchors, counts, sizes = _layout()
    gen = torch.Generator().manual_seed(1)
    for metric in ("legacy_iof_diou", "diou"):
        gts = _random_boxes(gen, 3, 64, 96)
        valid = torch.ones(len(anchors), dtype=torch.bool)
        thr = atss_assign(anchors, counts, gts, valid).thresholds
        weights, matched = vlr_region(anchors, gts, thr, valid, 0.25, metric)
        for i, a in enumerate(anchors.tolist()):
            best = (-1.0, -1)
            for g, b in enumerate(gts.tolist()):
                inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(
                    0.0, min(a[3], b[3]) - max(a[1], b[1])
                )
                area_a = (a[2] - a[0]) * (a[3] - a[1])
                area_b = (b[2] - b[0]) * (b[3] - b[1])
                base = (
                    inter / area_a
                    if metric == "legacy_iof_diou"
                    else inter / (area_a + area_b - inter)
                )
                rho2 = ((a[0] + a[2] - b[0] - b[2]) / 2) ** 2 + (
                    (a[1] + a[3] - b[1] - b[3]) / 2
                ) ** 2
                c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (
                    max(a[3], b[3]) - min(a[1], b[1])
                ) ** 2
                d = base - rho2 / c2
                if 0.25 * thr[g] <= d < thr[g] and _iou(a, b) > best[0]:
                    best = (_iou(a, b), g)
            assert matched[i].item() == best[1], (metric, i)
            if best[1] >= 0:
                assert weights[i].item() == pytest.approx(best[0], abs=1e-5)
    with pytest.raises(ValueError, match="overlap metric"):
        pairwise_overlap(anchors[:2], anchors[:2], "giou")


# ---------------------------------------------------------------------------------- top block
def test_top_block_variants(tiny_cfg):
    from detectron2.modeling import build_backbone
    from detectron2.modeling.backbone.fpn import LastLevelP6P7

    cfg = tiny_cfg("gfl")
    torch.manual_seed(0)
    fpn = build_backbone(cfg).eval()
    x = torch.rand(1, 3, 64, 96)
    out = fpn(x)
    top = fpn.top_block
    assert top.in_feature == "p5" and not top.relu
    assert torch.allclose(out["p6"], top.p6(out["p5"]), atol=1e-6)
    assert torch.allclose(out["p7"], top.p7(out["p6"]), atol=1e-6)  # no ReLU before P7

    cfg.MODEL.FPN.TOP_BLOCK_IN, cfg.MODEL.FPN.TOP_BLOCK_RELU = "res5", True
    fpn = build_backbone(cfg).eval()
    d2 = LastLevelP6P7(fpn.top_block.p6.in_channels, 32)
    d2.load_state_dict(fpn.top_block.state_dict())
    c5 = fpn.bottom_up(x)["res5"]
    for a, b in zip(fpn.top_block(c5), d2(c5)):
        assert torch.equal(a, b)  # detectron2's RetinaNet layout
    cfg.MODEL.FPN.TOP_BLOCK_IN = "c6"
    with pytest.raises(ValueError, match="TOP_BLOCK_IN"):
        build_backbone(cfg)


# ---------------------------------------------------------------------------------------- GFL
def _gfl(cfg):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(cfg)


def test_gfl_losses_equal_the_formulas(tiny_cfg):
    """QFL / GIoU / DFL of GFL.losses recomputed location by location from the definitions."""
    from detectron2.utils.events import EventStorage

    from lgdkd.modeling.detectors.head_parts import aligned_iou

    cfg = tiny_cfg("gfl")
    model = _gfl(cfg)
    batch = toy_batch(cfg)
    with EventStorage(0):
        images = model.preprocess_image(batch)
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        preds = model.head(feats)
        # sharpen the box distributions so that predicted boxes overlap their targets
        preds[1] = [p * 3 for p in preds[1]]
        gt = [x["instances"] for x in batch]
        targets = model.label_anchors(feats, gt)
        losses = model.losses(targets, preds)
    flat = model.flatten_predictions(preds)
    logits, reg = flat[0].double(), flat[1].double()
    n_bins = model.reg_max + 1
    pos = targets.positive
    assert pos.any()
    qfl = box = dfl = wsum = 0.0
    n_pos = sum(max(int(p.sum()), 1) for p in pos)
    for i, r in itertools.product(range(pos.shape[0]), range(pos.shape[1])):
        if not targets.valid[i, r]:
            continue
        sig = logits[i, r].sigmoid()
        y = torch.zeros_like(sig)
        if pos[i, r]:
            s = targets.strides[r].item()
            c = targets.centers[r].double() / s
            prob = reg[i, r].view(4, n_bins).softmax(dim=1)
            dist = (prob * torch.arange(n_bins, dtype=torch.float64)).sum(dim=1)
            pb = torch.stack([c[0] - dist[0], c[1] - dist[1], c[0] + dist[2], c[1] + dist[3]])
            gb = targets.matched_boxes[i, r].double() / s
            iou = aligned_iou(pb[None], gb[None])[0]
            y[targets.labels[i, r]] = iou
            w = sig.max()
            wsum += w
            enc = [pb.min(gb)[:2], pb.max(gb)[2:]]
            enclose = (enc[1] - enc[0]).prod()
            inter = (pb[2:].min(gb[2:]) - pb[:2].max(gb[:2])).clamp(min=0).prod()
            union = (pb[2:] - pb[:2]).prod() + (gb[2:] - gb[:2]).prod() - inter
            box += w * (1 - (inter / union - (enclose - union) / enclose))
            t = torch.stack([c[0] - gb[0], c[1] - gb[1], gb[2] - c[0], gb[3] - c[1]]).clamp(
                0, model.reg_max - 0.1
            )
            logp = reg[i, r].view(4, n_bins).log_softmax(dim=1)
            sides = [
                -(
                    logp[e, int(t[e])] * (int(t[e]) + 1 - t[e])
                    + logp[e, int(t[e]) + 1] * (t[e] - int(t[e]))
                )
                for e in range(4)
            ]
            dfl += w * sum(sides) / 4
        bce = -(y * sig.log() + (1 - y) * (1 - sig).log())
        qfl += (bce * (y - sig).abs() ** 2).sum()
    assert losses["loss_qfl"].item() == pytest.approx(qfl.item() / n_pos, rel=1e-4)
    assert losses["loss_bbox"].item() == pytest.approx(2.0 * box.item() / wsum.item(), rel=1e-4)
    assert losses["loss_dfl"].item() == pytest.approx(0.25 * dfl.item() / wsum.item(), rel=1e-4)


def test_gfl_v2_and_voting_inference(tiny_cfg):
    from detectron2.utils.events import EventStorage

    cfg = tiny_cfg("gfl")
    cfg.MODEL.GFL.DGQP = True
    cfg.MODEL.GFL.NMS_TYPE = "voting_cluster_diou"
    model = _gfl(cfg)
    batch = toy_batch(cfg)
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {"loss_qfl", "loss_bbox", "loss_dfl"}
    sum(losses.values()).backward()
    assert model.head.reg_conf[0].weight.grad.abs().sum() > 0  # DGQP trained through QFL
    model.eval()
    with torch.no_grad():
        out = model(batch[:2])
    inst = out[0]["instances"]
    assert len(inst) > 0 and (inst.scores <= 1).all()
    # the plain NMS path keeps the same top detection (voting only moves boxes)
    model.nms_type = "nms"
    with torch.no_grad():
        plain = model(batch[:2])[0]["instances"]
    assert plain.scores[0] == inst.scores[0]


def test_gfl_image_without_boxes(tiny_cfg):
    from detectron2.utils.events import EventStorage

    cfg = tiny_cfg("gfl")
    model = _gfl(cfg)
    batch = toy_batch(cfg, n=1)  # toy image 0 has no object
    assert len(batch[0]["instances"]) == 0
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"] == 0 and losses["loss_dfl"] == 0 and losses["loss_qfl"] > 0


# ----------------------------------------------------------------------------------------- LD
def _ld_cfg(tiny_cfg, tmp_path, **teacher_overrides):
    """An LD config whose teacher is a (randomly initialised) tiny GFL saved to tmp_path."""
    from detectron2.modeling import build_model

    from lgdkd.data import apply_num_classes

    tcfg = tiny_cfg("gfl")
    for k, v in teacher_overrides.items():
        tcfg.merge_from_list([k, v])
    apply_num_classes(tcfg)
    torch.manual_seed(1)
    teacher = build_model(tcfg)
    (tmp_path / "teacher.yaml").write_text(tcfg.dump())
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    cfg = tiny_cfg("gfl")
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "GFL"
    cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(tmp_path / "teacher.yaml")
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "teacher.pth")
    cfg.MODEL.DISTILL.DISTILLERS = ["LDDistiller"]
    cfg.MODEL.DISTILL.LD.KD_VLR_WEIGHT = 1.0
    return cfg


def _outputs(model, batch):
    from detectron2.utils.events import EventStorage

    adapter = model._adapter
    with EventStorage(0):
        images, gt = adapter.preprocess(model.student, batch)
        student = adapter.run(model.student, images, gt)
        student.targets = adapter.targets(model.student, student)
        teacher = model.teacher(batch, student)
    return student, teacher


def test_ld_is_zero_when_the_teacher_equals_the_student(tiny_cfg, tmp_path):
    cfg = _ld_cfg(tiny_cfg, tmp_path)
    model = _gfl(cfg)
    student, teacher = _outputs(model, toy_batch(cfg))
    losses = model.distillers[0](student, teacher)
    assert set(losses) == {
        "loss_distill_ld",
        "loss_distill_ld_vlr",
        "loss_distill_kd",
        "loss_distill_kd_vlr",
    }
    assert all(v > 0 for v in losses.values()), losses
    same = model.distillers[0](student, student)
    assert all(abs(v.item()) < 1e-6 for v in same.values()), same


def test_ld_without_task_losses(tiny_cfg, tmp_path):
    """MODEL.DISTILL.TASK_LOSS_WEIGHT 0: LD still gets the student's ATSS targets; only the
    distillation losses are returned and they train the student."""
    from detectron2.utils.events import EventStorage

    cfg = _ld_cfg(tiny_cfg, tmp_path)
    cfg.MODEL.DISTILL.TASK_LOSS_WEIGHT = 0.0
    model = _gfl(cfg)
    model.train()
    with EventStorage(0):
        losses = model(toy_batch(cfg))
    assert set(losses) == {
        "loss_distill_ld",
        "loss_distill_ld_vlr",
        "loss_distill_kd",
        "loss_distill_kd_vlr",
    }
    sum(losses.values()).backward()
    assert model.student.head.cls_score.weight.grad.abs().sum() > 0


def test_ld_main_term_equals_the_official_sum(tiny_cfg, tmp_path):
    """legacy Main LD = 0.25 * sum_i w_i sum_e T^2 mean_k p_T log(p_T / q_S) / 4."""
    cfg = _ld_cfg(tiny_cfg, tmp_path)
    cfg.MODEL.DISTILL.LD.NORM = "legacy"
    model = _gfl(cfg)
    student, teacher = _outputs(model, toy_batch(cfg))
    got = model.distillers[0](student, teacher)["loss_distill_ld"]
    flat_s = model.student.flatten_predictions(student.predictions)
    flat_t = model.student.flatten_predictions(teacher.predictions)
    pos = student.targets.positive
    t_temp, expected = 10.0, 0.0
    for i, r in pos.nonzero().tolist():
        w = flat_s[0][i, r].sigmoid().max().double()
        for e in range(4):
            zs = flat_s[1][i, r].view(4, -1)[e].double() / t_temp
            zt = flat_t[1][i, r].view(4, -1)[e].double() / t_temp
            p, logq = zt.softmax(0), zs.log_softmax(0)
            expected += w * t_temp**2 * (p * (p.log() - logq)).mean() / 4
    assert got.item() == pytest.approx(0.25 * expected.item(), rel=1e-4)


def test_ld_batch_invariance(tiny_cfg, tmp_path):
    """1 worker x 4 images vs 1 x 2 (legacy sums halve; per_image / weight_sum do not) and vs
    2 gloo processes x 2 images (tools/ld_batch_invariance.py)."""
    cfg = _ld_cfg(tiny_cfg, tmp_path)
    cfg.MODEL.GFL.NORM = "GN"  # batch-independent norms everywhere but the BN backbone (eval)
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.GFL.NORM = ""
    # toy images 1-3 and 5 have boxes: use the 4 images with boxes, all of one size
    cfg.DATASETS.TRAIN = (cfg.DATASETS.TRAIN[0],)
    yaml = tmp_path / "ld.yaml"
    yaml.write_text(cfg.dump())
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "ld_batch_invariance.py")]
        + ["--config-file", str(yaml), "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for line in out.read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        split = {"1 worker x 4": "4", "1 worker x 2": "2", "2 gloo proce": "2x2"}[cells[1][:12]]
        rows[(cells[0], split)] = [float(x) for x in cells[2:]]
    # columns: kd, kd_vlr, ld, ld_vlr (sorted names)
    for norm in ("per_image", "weight_sum"):
        one, two = rows[(norm, "4")], rows[(norm, "2x2")]
        assert one == pytest.approx(two, rel=1e-4), (norm, one, two)
    # the official LD sums follow the images per worker: 2 processes x 2 images optimise half
    # the value of 1 x 4, the mean of what each worker computes alone
    legacy_4, legacy_2p = rows[("legacy", "4")], rows[("legacy", "2x2")]
    for col in (2, 3):
        assert legacy_2p[col] == pytest.approx(legacy_4[col] / 2, rel=1e-4)
    assert rows[("per_image", "2")] != pytest.approx(rows[("per_image", "4")], rel=1e-3)


@pytest.mark.parametrize(
    "override, message",
    [
        (("MODEL.GFL.REG_MAX", "8"), "REG_MAX"),
        (("MODEL.GFL.IN_FEATURES", "['p3', 'p4', 'p5', 'p6']"), "levels"),
        (("MODEL.META_ARCHITECTURE", "RetinaNet"), "GFL teacher"),
    ],
)
def test_mismatched_teacher_is_refused(tiny_cfg, tmp_path, override, message):
    from detectron2.modeling import build_model

    overrides = {override[0]: override[1]}
    if override[1] == "RetinaNet":
        overrides["MODEL.BACKBONE.NAME"] = "build_retinanet_resnet_fpn_backbone"
        overrides["MODEL.ANCHOR_GENERATOR.SIZES"] = "[[16], [32], [64], [128], [256]]"
    cfg = _ld_cfg(tiny_cfg, tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_non_gfl_student_and_bad_keys_are_refused(tiny_cfg, tmp_path):
    from detectron2.modeling import build_model

    cfg = _ld_cfg(tiny_cfg, tmp_path)
    cfg.MODEL.DISTILL.LD.NORM = "batch"
    with pytest.raises(ValueError, match="LD.NORM"):
        build_model(cfg)
    cfg = _ld_cfg(tiny_cfg, tmp_path)
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.RETINANET.NUM_CLASSES = 2
    with pytest.raises(ValueError, match="student must be a GFL"):
        build_model(cfg)


@pytest.mark.slow
def test_gfl_teacher_ld_student_train_eval_export(tiny_cfg, run_train_net, tmp_path):
    """train_net.py: GFL teacher, LD student with --resume and evaluation, export that loads
    strictly into a plain GFL."""
    from detectron2.modeling import build_model

    from lgdkd.config import get_cfg
    from lgdkd.export import export_student

    tcfg = tiny_cfg("gfl")
    tcfg.SOLVER.MAX_ITER = 3
    (tmp_path / "t.yaml").write_text(tcfg.dump())
    run_train_net("--config-file", tmp_path / "t.yaml", "OUTPUT_DIR", tmp_path / "teacher")
    cfg = tiny_cfg("gfl")
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "GFL"
    cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(tmp_path / "t.yaml")
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "teacher" / "model_final.pth")
    cfg.MODEL.DISTILL.TEACHER.EVAL = True
    cfg.MODEL.DISTILL.DISTILLERS = ["LDDistiller"]
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.WARMUP_ITERS = 0
    (tmp_path / "s.yaml").write_text(cfg.dump())
    out = tmp_path / "student"
    log = run_train_net("--config-file", tmp_path / "s.yaml", "OUTPUT_DIR", out)
    assert "loss_distill_ld" in log and "loss_distill_kd" in log and "TEACHER" in log
    assert "copypaste" in log
    resumed = tmp_path / "resumed"
    run_train_net("--config-file", tmp_path / "s.yaml", "OUTPUT_DIR", resumed, "SOLVER.MAX_ITER", 2)
    run_train_net("--config-file", tmp_path / "s.yaml", "--resume", "OUTPUT_DIR", resumed)
    a = torch.load(out / "model_final.pth", weights_only=False)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=False)["model"]
    assert not [k for k in a if not torch.equal(a[k], b[k])]

    w, c = export_student(cfg, str(out / "model_final.pth"), str(tmp_path / "export"))
    scfg = get_cfg()
    scfg.merge_from_file(c)
    assert scfg.MODEL.META_ARCHITECTURE == "GFL"
    model = build_model(scfg)
    model.load_state_dict(torch.load(w, weights_only=False)["model"], strict=True)


@pytest.mark.slow
def test_teacher_assistant_chain_recipe(tiny_cfg, tmp_path):
    """projects/LD/train_chain.py: teacher -> assistant -> student, each stage evaluated, the
    assistant's student weights teaching the last stage."""
    stages = []
    teacher = tiny_cfg("gfl")
    teacher.SOLVER.MAX_ITER = 2
    stages.append(teacher)
    for width in (32, 16):
        cfg = tiny_cfg("gfl")
        cfg.MODEL.FPN.OUT_CHANNELS = width
        cfg.SOLVER.MAX_ITER = 2
        cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
        cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "GFL"
        cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
        cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = "set by the chain"
        cfg.MODEL.DISTILL.DISTILLERS = ["LDDistiller"]
        stages.append(cfg)
    paths = []
    for k, cfg in enumerate(stages):
        paths.append(tmp_path / f"s{k}.yaml")
        paths[-1].write_text(cfg.dump())
    out = tmp_path / "chain"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "projects", "LD", "train_chain.py")]
        + ["--stages", *map(str, paths), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = (out / "summary.md").read_text()
    assert summary.count("| 1 |") == 1 and "| 3 |" in summary
    log3 = (out / "stage3_s2.stdout.txt").read_text()
    assert "stage2_s1/model_final.pth" in log3 and "loss_distill_ld" in log3


def test_ld_composes_with_main_region_feature_imitation(tiny_cfg, tmp_path):
    """LD + FitNet-style imitation on the ATSS positives (the paper's "main region" imitation):
    both distillers from one teacher pass, the region from the registered ATSSAssigner."""
    from detectron2.utils.events import EventStorage

    cfg = _ld_cfg(tiny_cfg, tmp_path)
    cfg.MODEL.DISTILL.DISTILLERS = ["LDDistiller", "FeatureMimicDistiller"]
    cfg.MODEL.DISTILL.ASSIGNER.NAME = "ATSSAssigner"
    cfg.MODEL.ATSS.ANCHOR_SCALE = 4.0
    cfg.MODEL.DISTILL.FEATURE_MIMIC.MASK = "assigner"
    cfg.MODEL.DISTILL.FEATURE_MIMIC.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    model = _gfl(cfg)
    batch = toy_batch(cfg)
    with EventStorage(0):
        losses = model(batch)
    assert losses["loss_distill_feature_mimic"] > 0 and losses["loss_distill_ld"] > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    # the assigner's positives are the GFL student's own ATSS positives (same anchors)
    student, _ = _outputs(model, batch)
    assignment = model.assigner(student)
    own = student.targets.positive
    region = torch.cat(
        [assignment.region_masks[f].flatten(1) for f in student.head_in_features], dim=1
    )
    assert torch.equal(region.bool(), own)


@pytest.mark.slow
def test_gfl_fits_a_smalltoy_batch(tiny_cfg):
    """Training and inference agree: after 40 steps on 3 toy images every object is found once,
    with a confident score and a tight box."""
    from detectron2.structures import pairwise_iou
    from detectron2.utils.events import EventStorage

    cfg = tiny_cfg("gfl")
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.GFL.NORM = "GN"
    cfg.MODEL.GFL.NUM_CONVS = 2
    model = _gfl(cfg)
    batch = toy_batch(cfg, n=3, start=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for it in range(40):
        with EventStorage(it):
            losses = model(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    for out, x in zip(outputs, batch):
        found = out["instances"][out["instances"].scores > 0.3]
        gt = x["instances"]
        assert len(found) == len(gt)
        iou = pairwise_iou(gt.gt_boxes, found.pred_boxes)
        assert (iou.max(dim=1).values > 0.8).all(), iou
        assert torch.equal(found.pred_classes[iou.argmax(dim=1)], gt.gt_classes)


def test_one_class_softmax_kd_is_refused(tmp_path, monkeypatch):
    """DeepForest has one class: LD's softmax KD would be 0 on every image."""
    from detectron2.modeling import build_model

    from lgdkd.config import get_cfg
    from lgdkd.data import apply_num_classes, register_datasets_from_cfg
    from lgdkd.modeling.teachers.pretrained import build_teacher_config

    monkeypatch.chdir(REPO_ROOT)
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs/LD/DeepForest/gfl_EffLite0_ld_kd.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.TIMM.PRETRAINED = ""
    register_datasets_from_cfg(cfg, check=False)
    apply_num_classes(cfg)
    assert cfg.MODEL.GFL.NUM_CLASSES == 1
    tcfg = build_teacher_config(cfg)
    torch.save({"model": build_model(tcfg).state_dict()}, tmp_path / "t.pth")
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "t.pth")
    model = build_model(cfg)  # sigmoid KD builds
    assert "loss_distill_kd" in model.distillers[0].loss_names
    cfg.MODEL.DISTILL.LD.KD_ACTIVATION = "softmax"
    with pytest.raises(ValueError, match="KD_WEIGHT = 10 on a one-class detector.*'sigmoid'"):
        build_model(cfg)
    cfg.MODEL.DISTILL.LD.KD_ACTIVATION = "tanh"
    with pytest.raises(ValueError, match="KD_ACTIVATION"):
        build_model(cfg)
