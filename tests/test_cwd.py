"""Channel-wise distillation (lgdkd/modeling/distillers/cwd.py), the method added as one file:
the loss against the paper's formula, padding and batch invariance, gradients, build checks,
its config node, a training step, and that no other file of lgdkd names it."""

import glob
import importlib
import os
import re

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

import lgdkd.modeling  # noqa: F401
from lgdkd.config import distill_config, get_cfg
from lgdkd.data.toy import register_builtin_toy
from lgdkd.modeling import DetectorOutputs
from lgdkd.modeling.distillers import DISTILLER_REGISTRY
from lgdkd.modeling.distillers.cwd import ChannelWiseDistiller, channel_wise_kl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference(student, teacher, tau):
    """The paper's loss on unpadded maps, summed over images and channels: the official code's
    cross-entropy -sum p_t log p_s minus the teacher's entropy, times tau^2."""
    n, c = student.shape[:2]
    p_s = torch.softmax(student.reshape(n * c, -1) / tau, dim=1)
    p_t = torch.softmax(teacher.reshape(n * c, -1) / tau, dim=1)
    cross_entropy = -(p_t * p_s.log()).sum()
    entropy = -(p_t * p_t.log()).sum()
    return (cross_entropy - entropy) * tau**2


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kl_matches_the_papers_formula(tau):
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 5, 6)
    kl, images = channel_wise_kl(s, t, torch.ones(2, 1, 5, 6), tau)
    assert images.item() == 2
    assert torch.allclose(kl, _reference(s, t, tau), rtol=1e-5)
    same, _ = channel_wise_kl(t, t, torch.ones(2, 1, 5, 6), tau)
    assert abs(same.item()) < 1e-5


def test_padding_is_left_out_and_gradients_stay_finite():
    torch.manual_seed(1)
    s, t = torch.randn(1, 4, 3, 5), torch.randn(1, 4, 3, 5)
    alone, _ = channel_wise_kl(s, t, torch.ones(1, 1, 3, 5), 1.0)
    # the same image in a batch padded to 6 x 7, the padding filled with large values
    s_pad = torch.full((1, 4, 6, 7), 50.0)
    t_pad = torch.full((1, 4, 6, 7), -50.0)
    s_pad[..., :3, :5], t_pad[..., :3, :5] = s, t
    s_pad.requires_grad_(True)
    mask = torch.zeros(1, 1, 6, 7)
    mask[..., :3, :5] = 1
    padded, _ = channel_wise_kl(s_pad, t_pad, mask, 1.0)
    assert torch.allclose(alone, padded, rtol=1e-5)
    padded.backward()
    assert torch.isfinite(s_pad.grad).all()
    assert s_pad.grad[..., 3:, :].abs().sum() == 0 and s_pad.grad[..., :3, :5].abs().sum() > 0


def test_an_image_without_cells_on_a_level_adds_nothing():
    torch.manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mask = torch.ones(2, 1, 4, 4)
    mask[1] = 0
    kl, images = channel_wise_kl(s.requires_grad_(True), t, mask, 1.0)
    first, _ = channel_wise_kl(s[:1], t[:1], mask[:1], 1.0)
    assert images.item() == 1 and torch.allclose(kl, first)
    kl.backward()
    assert torch.isfinite(s.grad).all() and s.grad[1].abs().sum() == 0


class _ShapesOnly:
    """A student / teacher stand-in with feature shapes only (what the distiller reads)."""

    def __init__(self, shapes):
        self.backbone, self._shapes = self, shapes

    def output_shape(self):
        return self._shapes


def _outputs(features, sizes):
    n = next(iter(features.values())).shape[0]
    images = ImageList(torch.zeros(n, 3, 64, 64), sizes)
    gt = [Instances(s, gt_boxes=Boxes(torch.zeros(0, 4))) for s in sizes]
    shapes = {
        k: ShapeSpec(channels=v.shape[1], stride=64 // v.shape[-1]) for k, v in features.items()
    }
    return DetectorOutputs(images, features, shapes, list(features), None, gt)


def test_distiller_sums_weighted_levels_and_is_batch_invariant():
    cfg = get_cfg()
    cfg.MODEL.DISTILL.CWD.IN_FEATURES = ["p3", "p4"]
    cfg.MODEL.DISTILL.CWD.TAU = 2.0
    cfg.MODEL.DISTILL.CWD.LOSS_WEIGHT = 3.0
    torch.manual_seed(3)
    s = {"p3": torch.randn(2, 4, 8, 8), "p4": torch.randn(2, 4, 4, 4)}
    t = {k: torch.randn(2, 8, *v.shape[-2:]) for k, v in s.items()}  # 8 teacher channels
    sizes = [(64, 64), (64, 64)]
    student = _outputs(s, sizes)
    d = ChannelWiseDistiller(
        cfg,
        student=_ShapesOnly(student.feature_shapes),
        teacher=_ShapesOnly(_outputs(t, sizes).feature_shapes),
    )
    assert sorted(d.align) == ["p3", "p4"]  # 4 -> 8 channels: 1x1 convs, as in the official code
    # the same distiller from plain arguments (detectron2's @configurable)
    plain = ChannelWiseDistiller(
        pairs=[("p3", "p3"), ("p4", "p4")],
        student_shapes=student.feature_shapes,
        teacher_shapes=_outputs(t, sizes).feature_shapes,
        tau=2.0,
        loss_weight=3.0,
    )
    plain.load_state_dict(d.state_dict())
    assert torch.equal(
        plain(student, _outputs(t, sizes))["loss_distill_cwd"],
        d(student, _outputs(t, sizes))["loss_distill_cwd"],
    )
    loss = d(student, _outputs(t, sizes))["loss_distill_cwd"]
    ref = 3.0 * sum(_reference(d.align[k](s[k]), t[k], 2.0) / (2 * 8) for k in s)
    assert torch.allclose(loss, ref, rtol=1e-5)
    # the same images twice in one batch: the loss does not grow with the images per worker
    doubled = d(
        _outputs({k: torch.cat([v, v]) for k, v in s.items()}, sizes * 2),
        _outputs({k: torch.cat([v, v]) for k, v in t.items()}, sizes * 2),
    )["loss_distill_cwd"]
    assert torch.allclose(doubled, loss, rtol=1e-5)


def test_build_checks_name_the_key():
    cfg = get_cfg()
    shapes = {"p3": ShapeSpec(channels=8, stride=8), "p4": ShapeSpec(channels=8, stride=16)}
    cfg.MODEL.DISTILL.CWD.IN_FEATURES = ["p3", "p5"]
    with pytest.raises(ValueError, match="student has no feature .p5."):
        ChannelWiseDistiller(cfg, student=_ShapesOnly(shapes), teacher=_ShapesOnly(shapes))
    cfg.MODEL.DISTILL.CWD.IN_FEATURES = ["p3"]
    cfg.MODEL.DISTILL.CWD.TEACHER_FEATURES = ["p4"]
    with pytest.raises(ValueError, match="stride 8 but teacher feature .p4. has stride 16"):
        ChannelWiseDistiller(cfg, student=_ShapesOnly(shapes), teacher=_ShapesOnly(shapes))
    cfg.MODEL.DISTILL.CWD.TEACHER_FEATURES = []
    cfg.MODEL.DISTILL.CWD.TAU = 0.0
    with pytest.raises(ValueError, match="TAU must be > 0"):
        ChannelWiseDistiller(cfg, student=_ShapesOnly(shapes), teacher=_ShapesOnly(shapes))


def test_config_node_is_declared_by_the_module():
    cfg = get_cfg()
    assert cfg.MODEL.DISTILL.CWD.TAU == 1.0 and cfg.MODEL.DISTILL.CWD.LOSS_WEIGHT == 5.0
    assert list(cfg.MODEL.DISTILL.CWD.IN_FEATURES) == ["p3", "p4", "p5", "p6"]
    module = importlib.import_module("lgdkd.modeling.distillers.cwd")
    distill_config("CWD")(module._defaults)  # the module imported again: accepted
    with pytest.raises(ValueError, match="MODEL.DISTILL.CWD is already defined"):
        distill_config("CWD")(lambda node: None)
    with pytest.raises(ValueError, match="MODEL.DISTILL.FEATURE_MIMIC is already defined"):
        distill_config("FEATURE_MIMIC")(lambda node: None)


def test_no_other_file_of_the_package_names_the_method():
    """The method is one file: nothing else in lgdkd/ refers to it (the role packages import
    each of their modules)."""
    here = os.path.join(ROOT, "lgdkd", "modeling", "distillers", "cwd.py")
    others = [
        p
        for p in glob.glob(os.path.join(ROOT, "lgdkd", "**", "*.py"), recursive=True)
        if os.path.abspath(p) != here
    ]
    assert len(others) > 50
    naming = [p for p in others if re.search(r"ChannelWise|\bCWD\b", open(p).read())]
    assert naming == []
    assert "ChannelWiseDistiller" in DISTILLER_REGISTRY


def test_train_step_with_a_retinanet_teacher(tmp_path):
    register_builtin_toy(str(tmp_path / "datasets"))
    quick = os.path.join(ROOT, "configs", "quick_schedules", "retinanet_R18_toy.yaml")
    tcfg = get_cfg()
    tcfg.merge_from_file(quick)
    tcfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RETINANET.NUM_CLASSES", 2])
    tcfg.DATASETS.NUM_CLASSES_FROM_DATA = False
    torch.manual_seed(1)
    teacher_yaml, teacher_pth = tmp_path / "teacher.yaml", tmp_path / "teacher.pth"
    teacher_yaml.write_text(tcfg.dump())
    torch.save({"model": build_model(tcfg).state_dict()}, teacher_pth)

    cfg = get_cfg()
    cfg.merge_from_file(
        os.path.join(ROOT, "configs", "quick_schedules", "cwd_retinanet_R18_toy.yaml")
    )
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RETINANET.NUM_CLASSES", 2])
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(teacher_yaml)
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(teacher_pth)
    torch.manual_seed(2)
    model = build_model(cfg)
    model.train()
    mapper = DatasetMapper(cfg, is_train=True)
    data = [mapper(d) for d in DatasetCatalog.get("lgdkd_toy_train")[:2]]
    calls = []
    model.teacher.register_forward_hook(lambda m, i, out: calls.append(out))
    with EventStorage(0):
        losses = model(data)
    assert calls[0].predictions is None  # CWD reads features only: the teacher's head is skipped
    assert losses["loss_distill_cwd"] > 0 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    bottom_up = list(model.student.backbone.bottom_up.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bottom_up)
