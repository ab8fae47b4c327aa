"""The distillation framework: schedule, regions, feature mimicking, the meta-architecture with
every student family, teacher checks, bad inputs and student export."""

import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

import lgdkd.modeling  # noqa: F401
from lgdkd.checkpoint import StrictLoadError
from lgdkd.config import get_cfg
from lgdkd.data.toy import register_builtin_toy
from lgdkd.export import export_student, student_config
from lgdkd.modeling import DetectorOutputs, DistillSchedule
from lgdkd.modeling.assigners import gt_box_masks, valid_region_masks
from lgdkd.modeling.distill.roles import Borrowed, Distiller
from lgdkd.modeling.distill.schedule import LossSchedule
from lgdkd.modeling.distillers import DISTILLER_REGISTRY, FeatureMimicDistiller

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = {
    "retinanet": "retinanet_R18_toy.yaml",
    "faster_rcnn": "faster_rcnn_R18_toy.yaml",
    "fcos": "fcos_R18_toy.yaml",
}


@pytest.fixture(scope="module", autouse=True)
def toy_data(tmp_path_factory):
    register_builtin_toy(str(tmp_path_factory.mktemp("datasets")))


def quick_cfg(family, **overrides):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "quick_schedules", QUICK[family]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.RANDOM_FLIP = "none"
    for key in (
        "MODEL.RETINANET.NUM_CLASSES",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "MODEL.FCOS.NUM_CLASSES",
    ):
        overrides.setdefault(key, 2)
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def toy_batch(cfg, start=0, n=2):
    """Images ``start``..``start+n-1`` of the toy train set; image 0 has no box."""
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get("lgdkd_toy_train")[start : start + n]]


def save_teacher(tmp_path, family, **overrides):
    """A teacher config file + weights of the quick ``family`` detector (random init)."""
    cfg = quick_cfg(family, **overrides)
    cfg.DATASETS.NUM_CLASSES_FROM_DATA = False
    torch.manual_seed(1)
    model = build_model(cfg)
    cfg_path, w_path = str(tmp_path / f"teacher_{family}.yaml"), str(tmp_path / f"{family}.pth")
    with open(cfg_path, "w") as f:
        f.write(cfg.dump())
    torch.save({"model": model.state_dict()}, w_path)
    return cfg_path, w_path


def distill_cfg(family, teacher, **overrides):
    cfg = quick_cfg(family, **overrides)
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = quick_cfg(family).MODEL.META_ARCHITECTURE
    if teacher is not None:
        cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
        cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, cfg.MODEL.DISTILL.TEACHER.WEIGHTS = teacher
        cfg.MODEL.DISTILL.DISTILLERS = ["FeatureMimicDistiller"]
    return cfg


# --------------------------------------------------------------------------------- schedule
def test_schedule_is_a_function_of_the_iteration():
    s = DistillSchedule(start_iter=10, stop_iter=20, warmup_iters=4, freeze_backbone_iters=3)
    weights = [s.distill_weight(i) for i in (0, 9, 10, 11, 12, 13, 14, 19, 20, 100)]
    # one warm-up convention (lgdkd.modeling.distill.schedule.LossSchedule): 0 at the start
    assert weights == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.0, 0.0]
    assert [s.backbone_frozen(i) for i in (0, 2, 3)] == [True, True, False]
    assert DistillSchedule().distill_weight(0) == 1.0
    with pytest.raises(ValueError, match="STOP_ITER"):
        DistillSchedule(start_iter=5, stop_iter=5)
    # HEAD's ramps are the same primitive: value x min(iteration / warm-up, 1), 0 from the stop
    ramp = LossSchedule(stop=6, warmup=4)
    assert [ramp.weight(i) for i in (0, 1, 2, 4, 5, 6)] == [0.0, 0.25, 0.5, 1.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------- regions
def test_gt_box_masks_on_hand_made_boxes():
    feats = {"p3": torch.zeros(2, 1, 8, 8), "p4": torch.zeros(2, 1, 4, 4)}
    inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 24.0, 16.0]])))
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)))
    masks = gt_box_masks([inst, empty], feats, {"p3": 8, "p4": 16})
    expected = torch.zeros(8, 8)
    expected[1, 1] = expected[1, 2] = 1  # centres (12, 12) and (20, 12) are inside
    assert torch.equal(masks["p3"][0, 0], expected)
    assert masks["p3"][1].sum() == 0
    # at stride 16 the centres are 8, 24, ...: (8, 8) is inside [8, 24) x [8, 16)
    assert masks["p4"][0, 0].nonzero().tolist() == [[0, 0]]


def test_valid_region_masks_exclude_padding():
    feats = {"p3": torch.zeros(2, 1, 8, 8)}
    masks = valid_region_masks([(40, 64), (64, 20)], feats, {"p3": 8})["p3"]
    assert masks[0, 0].sum(dim=1).tolist() == [8] * 5 + [0] * 3  # rows with centre < 40
    assert masks[1, 0].sum(dim=0).tolist() == [8] * 2 + [0] * 6  # columns with centre < 20


# ------------------------------------------------------------------------- feature mimicking
def _fake_outputs(features, sizes, boxes):
    n = next(iter(features.values())).shape[0]
    images = ImageList(torch.zeros(n, 3, 64, 64), sizes)
    gt = [Instances(s, gt_boxes=Boxes(b)) for s, b in zip(sizes, boxes)]
    shapes = {
        k: ShapeSpec(channels=v.shape[1], stride=64 // v.shape[-1]) for k, v in features.items()
    }
    return DetectorOutputs(images, features, shapes, list(features), None, gt)


class _ShapesOnly:
    """A student / teacher stand-in with feature shapes only (what FeatureMimic reads)."""

    detector = None

    def __init__(self, shapes):
        self.backbone, self._shapes = self, shapes

    def output_shape(self):
        return self._shapes


@pytest.mark.parametrize("mask", ["all", "gt_boxes"])
def test_feature_mimic_zero_when_equal_and_batch_invariant(mask):
    cfg = get_cfg()
    cfg.MODEL.DISTILL.FEATURE_MIMIC.ADAPTER = "identity"
    cfg.MODEL.DISTILL.FEATURE_MIMIC.MASK = mask
    torch.manual_seed(0)
    s_feats = {"p3": torch.randn(2, 4, 8, 8), "p4": torch.randn(2, 4, 4, 4)}
    t_feats = {k: torch.randn_like(v) for k, v in s_feats.items()}
    sizes = [(64, 48), (40, 64)]
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.tensor([[10.0, 0.0, 60.0, 38.0]])]
    student = _fake_outputs(s_feats, sizes, boxes)
    shape = student.feature_shapes
    d = FeatureMimicDistiller(cfg, student=_ShapesOnly(shape), teacher=_ShapesOnly(shape))
    same = d(student, _fake_outputs(s_feats, sizes, boxes))["loss_distill_feature_mimic"]
    assert same.item() == 0.0
    loss = d(student, _fake_outputs(t_feats, sizes, boxes))["loss_distill_feature_mimic"]
    assert loss.item() > 0
    # the same images twice in one batch: the loss must not grow with images per worker
    cat = {k: torch.cat([v, v]) for k, v in s_feats.items()}
    tcat = {k: torch.cat([v, v]) for k, v in t_feats.items()}
    doubled = d(_fake_outputs(cat, sizes * 2, boxes * 2), _fake_outputs(tcat, sizes * 2, boxes * 2))
    assert torch.allclose(doubled["loss_distill_feature_mimic"], loss, rtol=1e-6)
    # reference: per level, masked squared error over (selected positions x channels)
    if mask == "all":
        masks = valid_region_masks(sizes, s_feats, {"p3": 8, "p4": 16})
    else:
        masks = gt_box_masks(student.gt_instances, s_feats, {"p3": 8, "p4": 16})
    ref = sum(
        (((s_feats[k] - t_feats[k]) ** 2) * masks[k]).sum() / (masks[k].sum() * 4) for k in s_feats
    ) / len(s_feats)
    assert torch.allclose(loss, ref, rtol=1e-6)


def test_feature_mimic_refuses_incompatible_teacher():
    cfg = get_cfg()
    student = {"p3": ShapeSpec(channels=8, stride=8), "p4": ShapeSpec(channels=8, stride=16)}
    with pytest.raises(ValueError, match=r"stride 8 but teacher feature 'p3' has stride 16"):
        FeatureMimicDistiller(
            cfg,
            student=_ShapesOnly(student),
            teacher=_ShapesOnly({"p3": ShapeSpec(channels=8, stride=16)}),
        )
    cfg.MODEL.DISTILL.FEATURE_MIMIC.IN_FEATURES = ["p4"]
    cfg.MODEL.DISTILL.FEATURE_MIMIC.TEACHER_FEATURES = ["p5"]
    with pytest.raises(ValueError, match="teacher has no feature 'p5'"):
        FeatureMimicDistiller(
            cfg,
            student=_ShapesOnly(student),
            teacher=_ShapesOnly({"p4": ShapeSpec(channels=8, stride=16)}),
        )
    cfg.MODEL.DISTILL.FEATURE_MIMIC.TEACHER_FEATURES = []
    cfg.MODEL.DISTILL.FEATURE_MIMIC.ADAPTER = "identity"
    with pytest.raises(ValueError, match="equal channels"):
        FeatureMimicDistiller(
            cfg,
            student=_ShapesOnly(student),
            teacher=_ShapesOnly({"p4": ShapeSpec(channels=16, stride=16)}),
        )


# ----------------------------------------------------------------------- meta-architecture
@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn", "fcos"])
def test_train_step_every_family(tmp_path, family):
    teacher = save_teacher(tmp_path, family)
    cfg = distill_cfg(family, teacher)
    model = build_model(cfg)
    model.train()
    assert not model.teacher.training and not model.teacher.detector.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    data = toy_batch(cfg, start=0)  # image 0 has no box
    assert len(data[0]["instances"]) == 0 and len(data[1]["instances"]) > 0
    teacher_calls = []
    model.teacher.register_forward_hook(lambda m, i, out: teacher_calls.append(out))
    with EventStorage(0):
        losses = model(data)
    # feature mimicking reads features only: the teacher's head does not run
    assert len(teacher_calls) == 1 and teacher_calls[0].predictions is None
    assert set(teacher_calls[0].features) >= {"p3", "p4", "p5"}
    assert "loss_distill_feature_mimic" in losses
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.distillers.parameters())
    bottom_up = list(model.student.backbone.bottom_up.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bottom_up)
    model.eval()
    out = model(data)
    assert len(out) == 2 and "instances" in out[0]


@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn"])
def test_without_distillation_equals_plain_student(family):
    data = toy_batch(quick_cfg(family), start=1)
    torch.manual_seed(0)
    plain = build_model(quick_cfg(family))
    torch.manual_seed(0)
    wrapped = build_model(distill_cfg(family, teacher=None))
    assert wrapped.teacher is None and len(wrapped.distillers) == 0
    plain.train()
    wrapped.train()
    with EventStorage(0):
        torch.manual_seed(3)
        a = plain(data)
        torch.manual_seed(3)
        b = wrapped(data)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_schedule_switches_teacher_and_freezes_backbone(tmp_path):
    teacher = save_teacher(tmp_path, "retinanet")
    cfg = distill_cfg(
        "retinanet",
        teacher,
        **{
            "MODEL.DISTILL.SCHEDULE.START_ITER": 2,
            "MODEL.DISTILL.SCHEDULE.FREEZE_BACKBONE_ITERS": 3,
        },
    )
    model = build_model(cfg)
    model.train()
    calls = []
    model.teacher.register_forward_hook(lambda *a: calls.append(1))
    data = toy_batch(cfg, start=1)
    with EventStorage(0) as storage:
        off = model(data)
        storage.iter = 2
        on = model(data)
    assert off["loss_distill_feature_mimic"].item() == 0.0 and len(calls) == 1
    assert on["loss_distill_feature_mimic"].item() > 0
    frozen = {id(p) for p in model.frozen_parameters(0)}
    assert frozen == {id(p) for p in model.student.backbone.bottom_up.parameters()}
    assert model.frozen_parameters(3) == []


# ------------------------------------------------------------------------------ bad inputs
def test_unknown_distiller_lists_valid_names(tmp_path):
    cfg = distill_cfg("retinanet", save_teacher(tmp_path, "retinanet"))
    cfg.MODEL.DISTILL.DISTILLERS = ["FeatureMimic"]
    with pytest.raises(KeyError, match="FeatureMimicDistiller"):
        build_model(cfg)


def test_missing_teacher_weights(tmp_path):
    cfg_path, _ = save_teacher(tmp_path, "retinanet")
    cfg = distill_cfg("retinanet", (cfg_path, str(tmp_path / "nowhere.pth")))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model(cfg)


def test_teacher_with_other_class_count_is_refused(tmp_path):
    teacher = save_teacher(tmp_path, "retinanet", **{"MODEL.RETINANET.NUM_CLASSES": 5})
    with pytest.raises(ValueError, match="Teacher predicts 5 classes .* predicts 2"):
        build_model(distill_cfg("retinanet", teacher))


def test_teacher_weights_of_another_network_are_refused(tmp_path):
    cfg_path, _ = save_teacher(tmp_path, "retinanet")
    _, rcnn_weights = save_teacher(tmp_path, "faster_rcnn")
    with pytest.raises(StrictLoadError, match="missing in the file: .*head"):
        build_model(distill_cfg("retinanet", (cfg_path, rcnn_weights)))


def test_teacher_with_other_strides_is_refused(tmp_path):
    # a Faster R-CNN teacher (P2-P6) cannot be mimicked on the RetinaNet student's P7
    teacher = save_teacher(tmp_path, "faster_rcnn")
    cfg = distill_cfg("retinanet", teacher)
    cfg.MODEL.DISTILL.FEATURE_MIMIC.IN_FEATURES = ["p6", "p7"]
    with pytest.raises(ValueError, match="teacher has no feature 'p7'"):
        build_model(cfg)
    cfg.MODEL.DISTILL.FEATURE_MIMIC.IN_FEATURES = ["p3"]
    cfg.MODEL.DISTILL.FEATURE_MIMIC.TEACHER_FEATURES = ["p2"]
    with pytest.raises(ValueError, match="stride 8 but teacher feature 'p2' has stride 4"):
        build_model(cfg)


# ---------------------------------------------------------------------------------- export
@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn"])
def test_exported_student_is_stock_detectron2(tmp_path, family):
    cfg = distill_cfg(family, save_teacher(tmp_path, family))
    model = build_model(cfg)
    ckpt = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 3}, ckpt)
    w, c = export_student(cfg, ckpt, str(tmp_path / "export"))
    exported = torch.load(w, weights_only=False)["model"]
    assert not any(k.startswith(("teacher.", "distillers.", "student.")) for k in exported)
    assert (
        student_config(cfg).MODEL.META_ARCHITECTURE == cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    )

    # strict load into detectron2 alone (no lgdkd.modeling), and the same predictions
    data = toy_batch(quick_cfg(family), start=1)
    model.eval()
    with torch.no_grad():
        ref = model(data)
    torch.save(
        [{"image": d["image"], "height": d["height"], "width": d["width"]} for d in data],
        str(tmp_path / "inputs.pth"),
    )
    torch.save([r["instances"].get_fields() for r in ref], str(tmp_path / "ref.pth"))
    script = f"""
import sys, torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
cfg = get_cfg()
cfg.merge_from_file({c!r})
model = build_model(cfg)
model.load_state_dict(torch.load({w!r}, weights_only=False)["model"], strict=True)
model.eval()
inputs = torch.load({str(tmp_path / "inputs.pth")!r}, weights_only=False)
ref = torch.load({str(tmp_path / "ref.pth")!r}, weights_only=False)
with torch.no_grad():
    out = model(inputs)
for o, r in zip(out, ref):
    f = o["instances"].get_fields()
    assert torch.equal(f["pred_boxes"].tensor, r["pred_boxes"].tensor)
    assert torch.equal(f["scores"], r["scores"])
assert "lgdkd.modeling" not in sys.modules
print("OK")
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


# ---------------------------------------------------------------------------------- roles
class _BorrowingDistiller(Distiller):
    """Holds a module of the student as a borrowed part, and one parameter of its own."""

    needs_teacher = False
    loss_names = ("loss_distill_borrowed",)

    def __init__(self, cfg, *, student, teacher):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.student_parts = Borrowed(backbone=student.backbone)

    def forward(self, student, teacher, assignment=None):
        return {"loss_distill_borrowed": self.scale * 0.0}


class _NotADistiller(torch.nn.Module):
    def __init__(self, cfg, *, student, teacher):
        super().__init__()


def test_roles_are_subclasses_and_borrowed_parts_stay_out_of_their_state(monkeypatch):
    monkeypatch.setitem(DISTILLER_REGISTRY._obj_map, "_BorrowingDistiller", _BorrowingDistiller)
    monkeypatch.setitem(DISTILLER_REGISTRY._obj_map, "_NotADistiller", _NotADistiller)
    cfg = quick_cfg("retinanet")
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.DISTILL.DISTILLERS = ["_BorrowingDistiller"]
    model = build_model(cfg)
    keys = [k for k in model.state_dict() if k.startswith("distillers.")]
    assert keys == ["distillers.0.scale"]  # the borrowed backbone is the student's only
    assert model.distillers[0].student_parts.backbone is model.student.backbone
    cfg.MODEL.DISTILL.DISTILLERS = ["_NotADistiller"]
    with pytest.raises(
        TypeError,
        match=r"DISTILLERS: '_NotADistiller' .* not a subclass of "
        r"lgdkd.modeling.distill.roles.Distiller",
    ):
        build_model(cfg)


class _TowerReader(Distiller):
    """Reads the student's cls tower through ``student_taps``."""

    needs_teacher = False
    needs_teacher_predictions = False
    loss_names = ("loss_distill_tower",)

    def __init__(self, path="head.cls_subnet"):
        super().__init__()
        self.student_taps = {"cls_tower": path}
        self.seen = None

    def forward(self, student, teacher, assignment=None):
        self.seen = (student.extras["cls_tower"], student.features, student.head_in_features)
        return {"loss_distill_tower": sum(t.mean() for t in student.extras["cls_tower"]) * 0.0}


def test_student_taps_record_sub_module_outputs_per_level():
    from lgdkd.modeling import DistillationDetector

    cfg = quick_cfg("retinanet")
    student = build_model(cfg)
    reader = _TowerReader()
    model = DistillationDetector(student=student, distillers=[reader])
    model.train()
    with EventStorage(0):
        losses = model(toy_batch(cfg, start=1))
    towers, features, names = reader.seen
    assert len(towers) == len(names) == 5
    for t, name in zip(towers, names):
        assert torch.equal(t, student.head.cls_subnet(features[name]))
    assert "loss_distill_tower" in losses
    # the hooks are gone after the student's forward: evaluation records nothing
    assert not student.head.cls_subnet._forward_hooks
    with pytest.raises(ValueError, match="reads the output of the student's 'head.no_such'"):
        DistillationDetector(student=student, distillers=[_TowerReader("head.no_such")])
