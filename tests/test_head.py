"""HEAD / TF-HEAD: proposals with anchor positions, RoI sampling with GT markers, the
teacher on the student's RoIs, AKD / CKD, warm-up weights, one training step end to end and
the exported student."""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from test_distillation import ROOT, quick_cfg, save_teacher, toy_batch, toy_data  # noqa: F401

import lgdkd.modeling  # noqa: F401
from lgdkd.export import export_student
from lgdkd.modeling.distill.schedule import LossSchedule
from lgdkd.modeling.distillers.head import (
    HEADDistiller,
    akd_loss,
    anchor_feature_loss,
    box_head_activations,
    retina_proposals,
)

SMALL = {
    "MODEL.DISTILL.HEAD.ASSIST.FC_DIM": 64,
    "MODEL.DISTILL.HEAD.ASSIST.BATCH_SIZE_PER_IMAGE": 32,
    "MODEL.DISTILL.HEAD.PROPOSAL.PRE_NMS_TOPK_PER_LEVEL": 200,
    "MODEL.DISTILL.HEAD.PROPOSAL.POST_NMS_TOPK": 50,
}


def head_cfg(teacher, distiller="HEADDistiller", **overrides):
    cfg = quick_cfg("retinanet", **{**SMALL, **overrides})
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.DISTILL.DISTILLERS = [distiller]
    if teacher is not None:
        cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
        cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, cfg.MODEL.DISTILL.TEACHER.WEIGHTS = teacher
    else:
        cfg.MODEL.DISTILL.HEAD.ASSIST.INIT_FROM_TEACHER = False
        cfg.MODEL.DISTILL.HEAD.AKD.LOSS_WEIGHT = 0.0
        cfg.MODEL.DISTILL.HEAD.CKD.LOSS_WEIGHT = 0.0
    return cfg


@pytest.fixture(scope="module")
def rcnn_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("head_teacher"), "faster_rcnn")


# ------------------------------------------------------------------------------- proposals
def test_proposals_keep_anchor_positions_through_nms():
    torch.manual_seed(0)
    n, k, a = 2, 3, 2
    sizes = [(6, 5), (3, 3)]  # (H, W) per level
    strides = [8, 16]
    anchors, logits, deltas = [], [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cx = (xs.reshape(-1, 1) * s + s / 2).float().repeat(1, a)
        cy = (ys.reshape(-1, 1) * s + s / 2).float().repeat(1, a)
        half = torch.tensor([[s, 2 * s]], dtype=torch.float32).expand_as(cx)
        box = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4)
        anchors.append(Boxes(box))  # (y, x, a) order, a innermost
        logits.append(torch.randn(n, a * k, h, w))
        deltas.append(torch.randn(n, a * 4, h, w) * 0.1)
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    props = retina_proposals(anchors, logits, deltas, [(48, 40), (40, 40)], t, k, 20, 25, 0.7)
    for i, p in enumerate(props):
        assert 0 < len(p) <= 25
        assert (p.objectness_logits[:-1] >= p.objectness_logits[1:]).all()
        for row, box, score in zip(p.anchor_pos, p.proposal_boxes.tensor, p.objectness_logits):
            lvl, y, x, ai = row.tolist()
            h, w = sizes[lvl]
            # the remembered anchor reproduces the box and the score
            lg = logits[lvl][i].view(a, k, h, w)[ai, :, y, x]
            assert torch.isclose(lg.max(), score)
            dl = deltas[lvl][i].view(a, 4, h, w)[ai, :, y, x]
            anc = anchors[lvl].tensor[(y * w + x) * a + ai]
            ref = Boxes(t.apply_deltas(dl[None], anc[None]))
            ref.clip(p.image_size)
            assert torch.allclose(ref.tensor[0], box, atol=1e-5)
        # NMS ran per level: overlapping boxes of different levels may both survive, boxes
        # of one level overlap by at most 0.7
        from detectron2.structures import pairwise_iou

        for lvl in range(2):
            b = p.proposal_boxes[p.anchor_pos[:, 0] == lvl]
            iou = pairwise_iou(b, b) - torch.eye(len(b))
            assert (iou <= 0.7 + 1e-6).all()


def test_sampling_marks_gt_rows(rcnn_teacher):
    cfg = head_cfg(rcnn_teacher)
    model = build_model(cfg)
    d = model.distillers[0]
    gt = Instances((64, 64))
    gt.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, 30.0, 30.0], [20.0, 30.0, 60.0, 62.0]]))
    gt.gt_classes = torch.tensor([0, 1])
    p = Instances((64, 64))
    p.proposal_boxes = Boxes(torch.tensor([[5.0, 5.0, 29.0, 31.0], [40.0, 0.0, 60.0, 10.0]]))
    p.objectness_logits = torch.tensor([1.0, 0.5])
    p.anchor_pos = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 1]])
    with EventStorage(0):
        (s,) = d.assistant.sample([p], [gt])
    assert len(s) == 4  # 2 proposals + 2 GT rows, all sampled (batch 32)
    rows = {tuple(r) for r in s.anchor_pos.tolist()}
    assert rows == {(0, 1, 2, 3), (1, 0, 2, 1), (-1, -1, -1, 0), (-1, -1, -1, 1)}
    # positives first: the GT rows and the first proposal (IoU > 0.5)
    fg = s.gt_classes < cfg.MODEL.RETINANET.NUM_CLASSES
    assert fg.tolist() == [True, True, True, False]
    gt_rows = s.anchor_pos[:, 0] == -1
    for r, box in zip(s.anchor_pos[gt_rows], s.proposal_boxes.tensor[gt_rows]):
        assert torch.equal(box, gt.gt_boxes.tensor[r[3]])
    # an image without boxes: proposals only, all background
    empty = Instances((64, 64))
    empty.gt_boxes = Boxes(torch.zeros((0, 4)))
    empty.gt_classes = torch.zeros((0,), dtype=torch.long)
    with EventStorage(0):
        (s,) = d.assistant.sample([p], [empty])
    assert len(s) == 2 and (s.gt_classes == 2).all() and (s.anchor_pos[:, 0] >= 0).all()


# ------------------------------------------------------------------------ weights, features
def test_head_ramps_follow_the_iteration():
    """HEAD's weights: WEIGHT x min(iteration / WARMUP_ITERS, 1), 0 from EARLY_STOP_ITER."""
    assert [2.0 * LossSchedule(warmup=2000).weight(i) for i in (0, 500, 2000, 90000)] == [
        0.0,
        0.5,
        2.0,
        2.0,
    ]
    assert 1.3 * LossSchedule().weight(0) == 1.3
    early = LossSchedule(stop=58640, warmup=2000)
    assert 1.3 * early.weight(58639) == 1.3 and early.weight(58640) == 0.0


def test_box_head_activations_are_post_relu(rcnn_teacher):
    model = build_model(head_cfg(rcnn_teacher))
    head = model.distillers[0].assistant.box_head
    x = torch.randn(5, 32, 7, 7)
    out, acts = box_head_activations(head, x, ["fc1", "fc2"])
    assert torch.equal(out, head(x))
    assert torch.equal(acts["fc1"], torch.relu(head.fc1(x.flatten(1))))
    assert (acts["fc2"] >= 0).all() and torch.equal(acts["fc2"], out)
    with pytest.raises(KeyError, match="fc3"):
        box_head_activations(head, x, ["fc3"])


def test_weight_transfer_copies_the_teacher_head(rcnn_teacher):
    model = build_model(head_cfg(rcnn_teacher))
    a = model.distillers[0].assistant
    t = model.teacher.detector.roi_heads
    for k, v in t.box_head.state_dict().items():
        assert torch.equal(a.box_head.state_dict()[k], v), k
    for k, v in t.box_predictor.state_dict().items():
        assert torch.equal(a.box_predictor.state_dict()[k], v), k
    # copied, not shared
    assert a.box_head.fc1.weight.data_ptr() != t.box_head.fc1.weight.data_ptr()
    # the assistant applied to the teacher's pooled features gives the teacher's activations
    x = torch.randn(3, 32, 7, 7)
    _, sa = box_head_activations(a.box_head, x, ["fc1", "fc2"])
    _, ta = box_head_activations(t.box_head, x, ["fc1", "fc2"])
    assert all(torch.equal(sa[k], ta[k]) for k in sa)


# ---------------------------------------------------------------------------- one HEAD step
def _run_step(model, data, iteration):
    model.train()
    with EventStorage(iteration):
        return model(data)


def test_teacher_runs_on_exactly_the_sampled_rois(rcnn_teacher):
    cfg = head_cfg(rcnn_teacher)
    model = build_model(cfg)
    d = model.distillers[0]
    seen = {}
    orig_sample = d.assistant.sample

    def sample(*args):
        seen["sampled"] = orig_sample(*args)
        return seen["sampled"]

    d.assistant.sample = sample
    t_pooler = model.teacher.detector.roi_heads.box_pooler
    t_pooler.register_forward_hook(lambda m, i, o: seen.update(t_boxes=i[1]))
    model.teacher.detector.proposal_generator.register_forward_hook(
        lambda *a: seen.update(rpn=True)
    )
    losses = _run_step(model, toy_batch(cfg, start=0), iteration=3000)
    assert "rpn" not in seen  # the teacher's RPN never runs
    assert len(seen["t_boxes"]) == 2
    for tb, s in zip(seen["t_boxes"], seen["sampled"]):
        assert torch.equal(tb.tensor, s.proposal_boxes.tensor)
    assert losses["loss_distill_akd"] > 0 and losses["loss_distill_ckd"] > 0


@pytest.mark.parametrize("distiller", ["HEADDistiller", "TFHEADDistiller"])
def test_one_training_step_end_to_end(rcnn_teacher, distiller):
    teacher = rcnn_teacher if distiller == "HEADDistiller" else None
    cfg = head_cfg(teacher, distiller)
    if distiller == "TFHEADDistiller":
        cfg.MODEL.DISTILL.HEAD.TF.FCOS_NUM_CONVS = 1
    model = build_model(cfg)
    data = toy_batch(cfg, start=0)  # image 0 has no box
    assert len(data[0]["instances"]) == 0 and len(data[1]["instances"]) > 0
    losses = _run_step(model, data, iteration=2500)
    assert set(model.distillers[0].loss_names) <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert all(v > 0 for k, v in losses.items() if k.startswith("loss_distill")), losses
    sum(losses.values()).backward()
    if teacher is not None:
        assert all(p.grad is None for p in model.teacher.parameters())
    # the assistant's and the distillation losses reach the student's backbone
    bottom_up = list(model.student.backbone.bottom_up.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bottom_up)
    assistant = model.distillers[0].assistant
    assert all(p.grad is not None for p in assistant.parameters())
    model.eval()
    with torch.no_grad():
        out = model(data)
    assert len(out) == 2 and "instances" in out[0]


def test_assistant_loss_reaches_the_fpn_and_kd_is_zero_at_iteration_0(rcnn_teacher):
    cfg = head_cfg(rcnn_teacher)
    model = build_model(cfg)
    losses = _run_step(model, toy_batch(cfg, start=1), iteration=0)
    assert losses["loss_distill_akd"] == 0 and losses["loss_distill_ckd"] == 0
    model.zero_grad()
    losses["loss_assist_cls"].backward()
    fpn = [p for n, p in model.student.backbone.named_parameters() if "fpn_output" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fpn)
    # the RetinaNet head is not on the assistant's path (proposals are detached)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.student.head.parameters())


def test_akd_and_ckd_are_zero_when_features_match():
    torch.manual_seed(0)
    s, d, c = 7, 16, 8
    acts = {"fc1": torch.rand(s, d), "fc2": torch.rand(s, d)}
    eye = torch.nn.ModuleDict({n: torch.nn.Linear(d, d) for n in acts})
    for m in eye.values():
        torch.nn.init.eye_(m.weight)
        torch.nn.init.zeros_(m.bias)
    assert akd_loss(eye, acts, {k: v.clone() for k, v in acts.items()}).item() == 0.0
    shifted = {k: v + 0.5 for k, v in acts.items()}
    assert akd_loss(eye, acts, shifted).item() == pytest.approx(2 * 0.25)
    # CKD: the tower vectors at the anchors of the non-GT rows
    towers = [torch.rand(2, c, 4, 5), torch.rand(2, c, 2, 3)]
    rows = torch.tensor(
        [[0, 0, 1, 2, 0], [1, 1, 0, 2, 3], [0, -1, -1, -1, 0], [1, 0, 3, 4, 1]]
    )  # (img, level, y, x, a); row 2 is a GT row
    lin = torch.nn.Linear(c, c)
    torch.nn.init.eye_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    target = torch.stack(
        [towers[0][0, :, 1, 2], towers[1][1, :, 0, 2], torch.full((c,), 9.0), towers[0][1, :, 3, 4]]
    )
    # the GT row's target (9.0) is not used
    assert anchor_feature_loss(lin, towers, rows, target).item() == 0.0
    target[3] += 1.0
    assert anchor_feature_loss(lin, towers, rows, target).item() == pytest.approx(1 / 3)
    # only GT rows: 0 with a graph
    zero = anchor_feature_loss(lin, towers, rows[2:3], target[2:3])
    assert zero.item() == 0.0 and zero.requires_grad


def test_bad_head_configs_are_refused(rcnn_teacher, tmp_path):
    cfg = head_cfg(None)
    cfg.MODEL.DISTILL.HEAD.AKD.LOSS_WEIGHT = 2.0
    with pytest.raises(ValueError, match="need a Faster R-CNN teacher"):
        build_model(cfg)
    retina_teacher = save_teacher(tmp_path, "retinanet")
    with pytest.raises(TypeError, match="teacher must be a Faster R-CNN"):
        build_model(head_cfg(retina_teacher))
    cfg = head_cfg(rcnn_teacher)
    cfg.MODEL.DISTILL.HEAD.ASSIST.IN_FEATURES = ["p3", "p5"]
    with pytest.raises(ValueError, match="consecutive"):
        build_model(cfg)
    cfg = head_cfg(rcnn_teacher, **{"MODEL.DISTILL.HEAD.CKD.ADAPTER": "conv"})
    with pytest.raises(ValueError, match="CKD.ADAPTER"):
        build_model(cfg)
    with pytest.raises(ValueError, match="teacher-free"):
        build_model(head_cfg(rcnn_teacher, "TFHEADDistiller"))
    cfg = head_cfg(None)
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "FCOS"
    with pytest.raises(
        ValueError, match="needs MODEL.DISTILL.STUDENT_META_ARCHITECTURE 'RetinaNet'"
    ):
        build_model(cfg)
    cfg = head_cfg(rcnn_teacher, **{"MODEL.DISTILL.HEAD.ASSIST.FC_DIM": 48})
    cfg.MODEL.DISTILL.HEAD.ASSIST.NUM_CONV = 2
    with pytest.raises(ValueError, match=r"does not match the teacher's \(box_head.conv1.weight"):
        build_model(cfg)


# ---------------------------------------------------------------------------------- export
def test_exported_head_student_is_a_plain_retinanet(rcnn_teacher, tmp_path):
    cfg = head_cfg(rcnn_teacher)
    model = build_model(cfg)
    assert isinstance(model.distillers[0], HEADDistiller)
    ckpt = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 3}, ckpt)
    w, c = export_student(cfg, ckpt, str(tmp_path / "export"))
    exported = torch.load(w, weights_only=False)["model"]
    assert not any("assistant" in k or "adapter" in k for k in exported)
    plain = quick_cfg("retinanet")
    plain_sd = build_model(plain).state_dict()
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in plain_sd.items()}
    script = f"""
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
cfg = get_cfg()
cfg.merge_from_file({c!r})
assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
model = build_model(cfg)
model.load_state_dict(torch.load({w!r}, weights_only=False)["model"], strict=True)
print("OK")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_fitnet_head_weight_transfer(tmp_path):
    teacher = save_teacher(tmp_path, "retinanet")
    cfg = quick_cfg("retinanet", **{"MODEL.DISTILL.FEATURE_MIMIC.HEAD_INIT_FROM_TEACHER": True})
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, cfg.MODEL.DISTILL.TEACHER.WEIGHTS = teacher
    cfg.MODEL.DISTILL.DISTILLERS = ["FeatureMimicDistiller"]
    model = build_model(cfg)
    t = model.teacher.detector.head.state_dict()
    for k, v in model.student.head.state_dict().items():
        assert torch.equal(v, t[k]), k
    assert model.student.head.cls_score.weight.data_ptr() != t["cls_score.weight"].data_ptr()
    # the backbone is not transferred
    assert not torch.equal(
        model.student.backbone.fpn_output3.weight,
        model.teacher.detector.backbone.fpn_output3.weight,
    )
    cfg.MODEL.RETINANET.NUM_CONVS = 2
    with pytest.raises(ValueError, match="teacher's head differs from the student's"):
        build_model(cfg)


def _train(out, *opts):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        os.path.join(ROOT, "configs", "quick_schedules", "head_retinanet_R18_toy.yaml"),
        *opts,
        "SEED",
        "3",
        "OUTPUT_DIR",
        str(out),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


def test_train_net_head_evaluates_and_resumes_exactly(rcnn_teacher, tmp_path):
    teacher = ["MODEL.DISTILL.TEACHER.WEIGHTS", rcnn_teacher[1]]
    out = tmp_path / "run"
    log = _train(out, *teacher, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    assert "loss_distill_akd" in log and "loss_distill_ckd" in log and "loss_assist_cls" in log
    with open(out / "metrics.json") as f:
        assert any("bbox/AP" in json.loads(line) for line in f)
    # 3 iterations, then --resume to 4: student, assistant and adapters end bit-identical
    resumed = tmp_path / "resumed"
    _train(resumed, *teacher, "SOLVER.MAX_ITER", "3")
    log = _train(resumed, "--resume", *teacher)
    assert "Starting training from iteration 3" in log
    a = torch.load(out / "model_final.pth", weights_only=False)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=False)["model"]
    assert any(k.startswith("distillers.0.assistant.") for k in a)
    assert any(k.startswith("distillers.0.akd_adapters.") for k in a)
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]


def test_conv_head_akd_on_a_conv_and_an_fc_layer(tmp_path):
    head = {
        "MODEL.ROI_BOX_HEAD.NUM_CONV": 2,
        "MODEL.ROI_BOX_HEAD.CONV_DIM": 16,
        "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
        "MODEL.ROI_BOX_HEAD.FC_DIM": 48,
    }
    teacher = save_teacher(tmp_path, "faster_rcnn", **head)
    cfg = head_cfg(
        teacher,
        **{
            "MODEL.DISTILL.HEAD.ASSIST.NUM_CONV": 2,
            "MODEL.DISTILL.HEAD.ASSIST.CONV_DIM": 16,
            "MODEL.DISTILL.HEAD.ASSIST.NUM_FC": 1,
            "MODEL.DISTILL.HEAD.ASSIST.FC_DIM": 48,
            "MODEL.DISTILL.HEAD.AKD.LAYERS": ["conv2", "fc1"],
        },
    )
    model = build_model(cfg)
    d = model.distillers[0]
    assert isinstance(d.akd_adapters["conv2"], torch.nn.Conv2d)
    assert d.akd_adapters["fc1"].out_features == 48 and d.ckd_adapter.out_features == 48
    losses = _run_step(model, toy_batch(cfg, start=1), iteration=2000)
    assert losses["loss_distill_akd"] > 0 and losses["loss_distill_ckd"] > 0
    sum(losses.values()).backward()
    assert d.akd_adapters["conv2"].weight.grad.abs().sum() > 0
