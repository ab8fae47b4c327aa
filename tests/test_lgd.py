"""LGD: the label-guided teacher against a per-image reference of the official structure,
attention confinement, gradient flow per phase, empty images, equality with the plain detector,
a fixed-seed golden loss, oracle evaluation and student export."""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from lgd_reference import reference_teacher

import lgdkd.modeling  # noqa: F401
from lgdkd.config import get_cfg
from lgdkd.data.toy import register_builtin_toy
from lgdkd.export import export_student
from lgdkd.modeling import DetectorOutputs
from lgdkd.modeling.teachers.label_guided import box_cell_masks, label_descriptors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = {
    "retinanet": ("retinanet_R18_toy.yaml", "RetinaNet"),
    "faster_rcnn": ("faster_rcnn_R18_toy.yaml", "GeneralizedRCNN"),
    "fcos": ("fcos_R18_toy.yaml", "FCOS"),
}
START = 2  # distillation on from this iteration in lgd_cfg


@pytest.fixture(scope="module", autouse=True)
def toy_data(tmp_path_factory):
    register_builtin_toy(str(tmp_path_factory.mktemp("datasets")))


def plain_cfg(family):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "quick_schedules", QUICK[family][0]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.MODEL.RETINANET.NUM_CLASSES = cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.FCOS.NUM_CLASSES = 2
    if family == "fcos":  # GN(32) on a 1x1 P7 of one image needs 2 channels per group
        cfg.MODEL.FPN.OUT_CHANNELS = 64
    return cfg


def lgd_cfg(family="retinanet", **lgd):
    cfg = plain_cfg(family)
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = QUICK[family][1]
    cfg.MODEL.DISTILL.TEACHER.NAME = "LabelGuidedTeacher"
    cfg.MODEL.DISTILL.DISTILLERS = ["LGDDistiller"]
    cfg.MODEL.DISTILL.SCHEDULE.START_ITER = START
    cfg.MODEL.DISTILL.SCHEDULE.FREEZE_BACKBONE_ITERS = 1
    cfg.MODEL.DISTILL.LGD.NUM_HEADS = 4
    for k, v in lgd.items():
        setattr(cfg.MODEL.DISTILL.LGD, k, v)
    return cfg


def toy_batch(cfg, start=0, n=2):
    """Images ``start``..``start+n-1`` of the toy train set; image 0 has no box."""
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get("lgdkd_toy_train")[start : start + n]]


def losses_at(model, batch, iteration):
    with EventStorage(iteration):
        return model(batch)


def student_outputs(model, batch):
    ad = model._adapter
    images, gt = ad.preprocess(model.student, batch)
    return ad.run(model.student, images, gt)


def synthetic_outputs(feats, boxes_per_image, classes_per_image, image_sizes):
    hi, wi = [s * 8 for s in next(iter(feats.values())).shape[-2:]]
    gt = []
    for b, c, size in zip(boxes_per_image, classes_per_image, image_sizes):
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor(b, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.tensor(c, dtype=torch.long)
        gt.append(inst)
    tensor = torch.zeros(len(gt), 3, hi, wi)
    return DetectorOutputs(
        images=ImageList(tensor, list(image_sizes)),
        features=feats,
        feature_shapes={},
        head_in_features=list(feats),
        gt_instances=gt,
    )


# ---------------------------------------------------------------------------------------------
# the teacher against a per-image reference of the official computation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalization", ["padded", "image"])
@pytest.mark.parametrize("context", [False, True])
def test_teacher_equals_per_image_reference(context, normalization):
    torch.manual_seed(0)
    model = build_model(lgd_cfg(ADD_CONTEXT_BOX=context, BOX_NORMALIZATION=normalization))
    teacher = model.teacher
    feats = {"p3": torch.randn(4, 32, 12, 16), "p4": torch.randn(4, 32, 6, 8)}
    student = synthetic_outputs(
        feats,
        [
            [[3, 4, 40, 50], [10, 10, 90, 60], [0, 0, 7.5, 5]],  # third: smaller than a cell
            [[20, 30, 60, 90]],
            [[0, 0, 120, 90], [50, 5, 70, 80]],  # first: spills outside the image
            [],  # no box
        ],
        [[0, 1, 1], [1], [0, 0], []],
        [(96, 128), (80, 100), (90, 110), (64, 64)],
    )
    got = teacher(None, student).features
    ref = reference_teacher(teacher, student)
    for k in feats:
        assert got[k].shape == feats[k].shape
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn", "fcos"])
def test_teacher_maps_have_the_students_keys_and_shapes(family):
    torch.manual_seed(0)
    model = build_model(lgd_cfg(family))
    batch = toy_batch(plain_cfg(family), start=1)
    with EventStorage(START):
        student = student_outputs(model, batch)
        teacher = model.teacher(batch, student)
    assert list(teacher.features) == list(student.features)
    for k, v in student.features.items():
        assert teacher.features[k].shape == v.shape, k
        assert torch.isfinite(teacher.features[k]).all()


def test_attention_never_mixes_images():
    torch.manual_seed(0)
    teacher = build_model(lgd_cfg(ADD_CONTEXT_BOX=True)).teacher
    boxes = [[[3, 4, 40, 50], [10, 10, 90, 60]], [[20, 30, 60, 90]], [[5, 5, 50, 50]]]
    classes = [[0, 1], [1], [0]]
    sizes = [(96, 128), (96, 128), (96, 128)]
    feats = {"p3": torch.randn(3, 32, 12, 16), "p4": torch.randn(3, 32, 6, 8)}
    base = teacher(None, synthetic_outputs(feats, boxes, classes, sizes)).features
    # other images' objects and features changed: image 0 is untouched
    feats2 = {k: torch.cat([v[:1], torch.randn_like(v[1:])]) for k, v in feats.items()}
    boxes2 = [boxes[0], [[1, 1, 30, 30], [40, 40, 90, 90], [0, 0, 128, 96]], []]
    other = teacher(None, synthetic_outputs(feats2, boxes2, [classes[0], [1, 0, 1], []], sizes))
    for k in feats:
        torch.testing.assert_close(other.features[k][0], base[k][0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(other.features[k][1], base[k][1])
    # permuting the images permutes the maps
    perm = [2, 0, 1]
    permuted = teacher(
        None,
        synthetic_outputs(
            {k: v[perm] for k, v in feats.items()},
            [boxes[i] for i in perm],
            [classes[i] for i in perm],
            sizes,
        ),
    ).features
    for k in feats:
        torch.testing.assert_close(permuted[k], base[k][perm], rtol=1e-5, atol=1e-5)


def test_descriptors_and_masks():
    inst = Instances((50, 60))
    inst.gt_boxes = Boxes(torch.tensor([[6.0, 5.0, 30.0, 25.0]]))
    inst.gt_classes = torch.tensor([1])
    kw = dict(num_classes=3, context_box=True)
    a = label_descriptors([inst], [(50, 60)], (64, 64), **kw)
    b = label_descriptors([inst], [(50, 60)], (96, 128), **kw)
    # "image": the encoding of a box does not depend on the batch's padded size
    torch.testing.assert_close(a["desc"], b["desc"])
    torch.testing.assert_close(a["desc"][0, 1], torch.tensor([0.1, 0.1, 0.5, 0.5, 0, 1, 0]) * 2 - 1)
    torch.testing.assert_close(a["desc"][0, 0], torch.tensor([0.0, 0, 1, 1, 0, 0, 0]) * 2 - 1)
    # "padded" (official): it does
    c = label_descriptors([inst], [(50, 60)], (64, 64), normalize_by="padded", **kw)
    d = label_descriptors([inst], [(50, 60)], (96, 128), normalize_by="padded", **kw)
    assert not torch.allclose(c["desc"], d["desc"])
    # the context row covers the whole map of every level; padding rows cover nothing
    for hw in [(8, 8), (4, 4), (1, 1)]:
        m = box_cell_masks(a["boxes"], a["valid"], (64, 64), hw, context_row=True)
        assert m[0, 0].sum() == hw[0] * hw[1]
    two = label_descriptors([inst, inst[:0]], [(50, 60), (40, 40)], (64, 64), **kw)
    m = box_cell_masks(two["boxes"], two["valid"], (64, 64), (8, 8), context_row=True)
    assert two["valid"].tolist() == [[True, True], [True, False]]
    assert m[1, 1].sum() == 0 and m[1, 0].sum() == 64


# ---------------------------------------------------------------------------------------------
# training behaviour
# ---------------------------------------------------------------------------------------------
def _grads(params):
    return [p.grad for p in params if p.grad is not None and p.grad.abs().sum() > 0]


def _backward(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)


@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn"])
def test_gradient_flow_per_phase(family):
    torch.manual_seed(0)
    model = build_model(lgd_cfg(family))
    model.train()
    batch = toy_batch(plain_cfg(family), start=1)
    student = model.student
    fpn = [p for n, p in student.backbone.named_parameters() if not n.startswith("bottom_up")]
    bottom_up = list(student.backbone.bottom_up.parameters())
    adapter = list(model.distillers[0].adapter.parameters())
    teacher = list(model.teacher.parameters())

    on = losses_at(model, batch, START)
    _backward(model, on["loss_distill_lgd"])
    assert not _grads(teacher), "the distillation loss reached the teacher"
    assert _grads(fpn) and _grads(adapter) and _grads(bottom_up)

    off = losses_at(model, batch, START - 1)
    assert off["loss_distill_lgd"] > 0  # computed in the off phase ...
    _backward(model, off["loss_distill_lgd"])
    assert _grads(adapter)
    assert not _grads(fpn) and not _grads(bottom_up) and not _grads(teacher)  # ... adapter only

    teacher_loss = sum(v for k, v in on.items() if k.endswith("_teacher"))
    _backward(model, teacher_loss)
    assert _grads(teacher)
    assert _grads(fpn), "appearance not detached: the teacher loss reaches the student FPN"

    # the student backbone is frozen for FREEZE_BACKBONE_ITERS iterations
    assert {id(p) for p in model.frozen_parameters(0)} == {id(p) for p in bottom_up}
    assert model.frozen_parameters(1) == []


@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn"])
def test_detached_appearance_keeps_the_teacher_loss_out_of_the_student(family):
    torch.manual_seed(0)
    model = build_model(lgd_cfg(family, DETACH_APPEARANCE=True))
    losses = losses_at(model, toy_batch(plain_cfg(family), start=1), START)
    teacher_loss = sum(v for k, v in losses.items() if k.endswith("_teacher"))
    _backward(model, teacher_loss)
    student = model.student
    assert not _grads(student.backbone.parameters())
    assert _grads(model.teacher.parameters())
    head = student.head if family == "retinanet" else student.roi_heads
    assert _grads(head.parameters()), "the teacher trains the student's (shared) head"


@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn", "fcos"])
@pytest.mark.parametrize("context", [False, True])
def test_images_without_boxes(family, context):
    torch.manual_seed(0)
    model = build_model(lgd_cfg(family, ADD_CONTEXT_BOX=context))
    cfg = plain_cfg(family)
    for batch in (toy_batch(cfg, start=0, n=2), toy_batch(cfg, start=0, n=1)):
        assert len(batch[0]["instances"]) == 0
        losses = losses_at(model, batch, START)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()


@pytest.mark.parametrize("family", ["retinanet", "fcos", "faster_rcnn"])
def test_student_losses_equal_the_plain_detector(family):
    torch.manual_seed(0)
    plain = build_model(plain_cfg(family))
    model = build_model(lgd_cfg(family))
    model.student.load_state_dict(plain.state_dict())
    plain.train()
    model.train()
    batch = toy_batch(plain_cfg(family), start=1)
    torch.manual_seed(1)
    ref = losses_at(plain, batch, START)
    torch.manual_seed(1)
    got = losses_at(model, batch, START)
    assert set(got) == set(ref) | {f"{k}_teacher" for k in ref} | {"loss_distill_lgd"}
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    if family != "faster_rcnn":  # the EMA normaliser is the plain detector's ...
        assert model.student.loss_normalizer == plain.loss_normalizer
        # ... unless the official double update is asked for
        model2 = build_model(lgd_cfg(family, TEACHER_UPDATES_LOSS_NORMALIZER=True))
        model2.student.load_state_dict(plain.state_dict())
        losses_at(model2, batch, START)
        assert model2.student.loss_normalizer != plain.loss_normalizer


def test_golden_losses():
    """Fixed seed, fixed batch: LGD's losses on the tiny RetinaNet (ResNet-18 from scratch)."""
    torch.manual_seed(0)
    model = build_model(lgd_cfg(ADD_CONTEXT_BOX=True))
    batch = toy_batch(plain_cfg("retinanet"), start=1)
    got = {k: round(float(v), 4) for k, v in losses_at(model, batch, START).items()}
    assert got == pytest.approx(GOLDEN, rel=1e-3), got


GOLDEN = {
    "loss_cls": 0.1243,
    "loss_box_reg": 0.1187,
    "loss_cls_teacher": 0.1361,
    "loss_box_reg_teacher": 0.1285,
    "loss_distill_lgd": 2.0407,
}


# ---------------------------------------------------------------------------------------------
# configuration errors, evaluation, export
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,value,message",
    [
        ("INTERACT_PATTERN", "crossGuided", "INTERACT_PATTERN"),
        ("NUM_HEADS", 5, "NUM_HEADS"),
        ("LOAD_LABELMAP", True, "MASK_ON"),
        ("PAINT_OVERLAP", "max", "PAINT_OVERLAP"),
        ("LOSS_REGION", "boxes", "LOSS_REGION"),
    ],
)
def test_bad_lgd_settings_are_refused(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_model(lgd_cfg(**{key: value}))


def test_mask_rcnn_student_with_label_maps():
    cfg = lgd_cfg("faster_rcnn", LOAD_LABELMAP=True, DETACH_APPEARANCE=True)
    cfg.MODEL.MASK_ON = True
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = toy_batch(plain_cfg("faster_rcnn"), start=0, n=2)
    for x in batch:  # the toy set has no segmentations: an ellipse inside each box
        inst = x["instances"]
        h, w = inst.image_size
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        b = inst.gt_boxes.tensor
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        rx, ry = (b[:, 2] - b[:, 0]).clamp(min=2) / 2, (b[:, 3] - b[:, 1]).clamp(min=2) / 2
        inside = ((xs - cx[:, None, None]) / rx[:, None, None]) ** 2 + (
            (ys - cy[:, None, None]) / ry[:, None, None]
        ) ** 2
        inst.gt_masks = BitMasks(inside <= 1)
    losses = losses_at(model, batch, START)
    assert "loss_mask" in losses and "loss_mask_teacher" in losses
    assert all(torch.isfinite(v) for v in losses.values())


def _train(out, *opts):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        os.path.join(ROOT, "configs", "quick_schedules", "lgd_retinanet_R18_toy.yaml"),
        *opts,
        "SEED",
        "3",
        "OUTPUT_DIR",
        str(out),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


def test_train_resume_evaluate_oracle_teacher_and_export(tmp_path):
    out = tmp_path / "run"
    log = _train(out, "TEST.EVAL_PERIOD", "4", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    assert "Evaluation results of the TEACHER" in log and "GROUND-TRUTH" in log
    assert "loss_distill_lgd" in log and "loss_cls_teacher" in log
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f]
    final = [m for m in metrics if "bbox/AP" in m][-1]
    assert any(k.startswith("teacher/") and k.endswith("bbox/AP") for k in final), final

    # 3 iterations (backbone frozen at 0, distillation on from 2), then --resume to 4: the
    # student, the trainable teacher and the adapter end bit-identical to the straight run
    resumed = tmp_path / "resumed"
    _train(resumed, "SOLVER.MAX_ITER", "3")
    log = _train(resumed, "--resume")
    assert "Starting training from iteration 3" in log
    a = torch.load(out / "model_final.pth", weights_only=False)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=False)["model"]
    assert any(k.startswith("teacher.") for k in a) and any(k.startswith("distillers.") for k in a)
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]

    cfg = get_cfg()
    cfg.merge_from_file(str(out / "config.yaml"))
    w, c = export_student(cfg, str(out / "model_final.pth"), str(tmp_path / "export"))
    check = (
        "import sys, torch; from detectron2.config import get_cfg; "
        "from detectron2.modeling import build_model; cfg = get_cfg(); "
        "cfg.merge_from_file(sys.argv[1]); m = build_model(cfg); "
        "sd = torch.load(sys.argv[2], weights_only=False)['model']; "
        "m.load_state_dict(sd, strict=True); print(type(m).__name__, len(sd))"
    )
    proc = subprocess.run([sys.executable, "-c", check, c, w], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("RetinaNet")


def test_instance_norm_matches_torch_and_accepts_1x1_maps():
    from torch.nn import functional as F

    from lgdkd.modeling.distillers.feature_mimic import instance_norm

    x = torch.randn(2, 5, 6, 7)
    torch.testing.assert_close(instance_norm(x), F.instance_norm(x))
    one = torch.randn(2, 5, 1, 1, requires_grad=True)
    with pytest.raises(ValueError):
        F.instance_norm(one, use_input_stats=True).sum()  # torch refuses 1x1 in training
    assert torch.equal(instance_norm(one), torch.zeros_like(one))
