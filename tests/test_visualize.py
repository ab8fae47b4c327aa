"""tools/visualize.py and lgdkd.visualize: for a tiny model of each method, every layer it
supports is drawn into a PNG of the documented size that shows what it should; an unsupported
layer is refused naming the config's layers; the step leaves the model as it was."""

import os
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

import lgdkd.modeling  # noqa: F401
from lgdkd.data import apply_num_classes
from lgdkd.visualize import check_layers, inspect_step, load_input, supported_layers, write_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = 1  # the first toy training image with boxes
BAND = 14  # rows covered by a panel's title band (Pillow's default font)


def _save_teacher(cfg, tmp_path, name):
    apply_num_classes(cfg)
    torch.manual_seed(1)
    model = build_model(cfg)
    (tmp_path / f"{name}.yaml").write_text(cfg.dump())
    torch.save({"model": model.state_dict()}, tmp_path / f"{name}.pth")
    return str(tmp_path / f"{name}.yaml"), str(tmp_path / f"{name}.pth")


def _distill(cfg, arch, teacher=None, distillers=(), assigner=""):
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = arch
    if teacher is not None:
        cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
        cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, cfg.MODEL.DISTILL.TEACHER.WEIGHTS = teacher
    cfg.MODEL.DISTILL.DISTILLERS = list(distillers)
    cfg.MODEL.DISTILL.ASSIGNER.NAME = assigner
    return cfg


def _fitnet(tiny_cfg, tmp_path):
    teacher = _save_teacher(tiny_cfg("retinanet"), tmp_path, "retinanet")
    return _distill(tiny_cfg("retinanet"), "RetinaNet", teacher, ["FeatureMimicDistiller"])


def _ld(tiny_cfg, tmp_path):
    teacher = _save_teacher(tiny_cfg("gfl"), tmp_path, "gfl")
    return _distill(tiny_cfg("gfl"), "GFL", teacher, ["LDDistiller"])


def _lad(tiny_cfg, tmp_path):
    teacher = _save_teacher(tiny_cfg("paa"), tmp_path, "paa")
    return _distill(tiny_cfg("paa"), "PAA", teacher, assigner="LADAssigner")


def _head(tiny_cfg, tmp_path):
    tcfg = tiny_cfg("faster_rcnn")
    teacher = _save_teacher(tcfg, tmp_path, "faster_rcnn")
    cfg = _distill(tiny_cfg("retinanet"), "RetinaNet", teacher, ["HEADDistiller"])
    cfg.MODEL.DISTILL.HEAD.ASSIST.FC_DIM = tcfg.MODEL.ROI_BOX_HEAD.FC_DIM
    cfg.MODEL.DISTILL.HEAD.ASSIST.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.DISTILL.HEAD.PROPOSAL.PRE_NMS_TOPK_PER_LEVEL = 200
    cfg.MODEL.DISTILL.HEAD.PROPOSAL.POST_NMS_TOPK = 50
    return cfg


def _lgd(tiny_cfg, tmp_path):
    cfg = _distill(tiny_cfg("retinanet"), "RetinaNet", None, ["LGDDistiller"])
    cfg.MODEL.DISTILL.TEACHER.NAME = "LabelGuidedTeacher"
    cfg.MODEL.DISTILL.LGD.NUM_HEADS = 4
    return cfg


KINDS = {  # config builder, the layers it must have
    "fitnet": (_fitnet, ["gt", "student_pos", "predictions"]),
    "ld": (_ld, ["gt", "student_pos", "ld_regions", "predictions"]),
    "lad": (_lad, ["gt", "student_pos", "teacher_pos", "predictions"]),
    "head": (_head, ["gt", "student_pos", "head_rois", "predictions"]),
    "lgd": (_lgd, ["gt", "student_pos", "lgd_energy", "predictions"]),
}


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _changed(png: np.ndarray, image: np.ndarray, box, x_offset=0, y_offset=0) -> bool:
    """Whether ``png`` differs from ``image`` on the outline of ``box`` (below the title)."""
    x0, y0, x1, y1 = [int(round(float(v))) for v in box]
    h, w = image.shape[:2]
    x0, x1 = max(x0, 0), min(x1, w - 1)
    y0, y1 = max(y0, BAND), min(y1, h - 1)
    if x0 > x1 or y0 > y1:
        return False
    region = (slice(y0 + y_offset, y1 + 1 + y_offset), slice(x0 + x_offset, x1 + 1 + x_offset))
    return bool((png[region] != image[y0 : y1 + 1, x0 : x1 + 1]).any())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_supported_layer_is_drawn(kind, tiny_cfg, tmp_path):
    make, expected = KINDS[kind]
    cfg = make(tiny_cfg, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert supported_layers(model) == expected
    layers = check_layers(model)
    inputs, _ = load_input(cfg, index=IMAGE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    view = inspect_step(model, inputs, layers, score_thresh=0.0, class_names=["rect", "ellipse"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the step changed the model"
    paths = write_layers(view, layers, str(tmp_path / "png"), score_thresh=0.0)
    assert set(paths) == set(layers) | {"combined"}
    image = view.image.astype(int)
    h, w = image.shape[:2]
    assert (h, w) == tuple(inputs["image"].shape[-2:])
    png = {k: _png(p) for k, p in paths.items()}
    gt = view.gt_boxes
    assert len(gt) > 0

    assert png["gt"].shape == (h, w, 3)
    assert all(_changed(png["gt"], image, b) for b in gt if b[3] > BAND)

    pos = view.student_pos
    assert png["student_pos"].shape == (h, w, 3) and len(pos.boxes) > 0
    assert set(pos.gt_index.tolist()) <= set(range(len(gt)))
    centers = (pos.boxes[:, :2] + pos.boxes[:, 2:]) / 2
    assert any(_changed(png["student_pos"], image, (x, y, x, y)) for x, y in centers)

    if "teacher_pos" in layers:
        assert png["teacher_pos"].shape == (h, w, 3) and len(view.teacher_pos.boxes) > 0
    if "ld_regions" in layers:
        levels = view.ld_regions
        assert png["ld_regions"].shape == (h, len(levels) * w, 3)
        assert sum(m.sum() for _, _, m, _ in levels) == len(pos.boxes)  # main = ATSS positives
        assert sum(v.sum() for _, _, _, v in levels) > 0
        i, (_, cells, main, _) = next((i, r) for i, r in enumerate(levels) if r[2].any())
        assert any(_changed(png["ld_regions"], image, c, x_offset=i * w) for c in cells[main])
    if "head_rois" in layers:
        rois = view.head_rois
        assert png["head_rois"].shape == (h, 2 * w, 3)
        assert len(rois["proposal_boxes"]) > 0 and rois["roi_positive"].any()
        positives = rois["roi_boxes"][rois["roi_positive"]]
        assert any(_changed(png["head_rois"], image, b, x_offset=w) for b in positives)
    if "lgd_energy" in layers:
        levels = view.lgd_energy
        assert png["lgd_energy"].shape == (2 * h, len(levels) * w, 3)
        assert [name for name, _, _ in levels] == ["p3", "p4", "p5", "p6", "p7"]
        assert all(s.shape == (h, w) and t.shape == (h, w) for _, s, t in levels)
        teacher_p3 = png["lgd_energy"][h + BAND : 2 * h, :w]
        assert len(np.unique(teacher_p3.reshape(-1, 3), axis=0)) > 10  # a heat map, not flat
    boxes = view.predictions[0]
    assert png["predictions"].shape == (h, w, 3) and len(boxes) > 0
    assert any(_changed(png["predictions"], image, b) for b in boxes)

    widths = [png[k].shape[1] for k in layers]
    heights = [png[k].shape[0] for k in layers]
    assert png["combined"].shape == (max(heights), sum(widths) + 4 * (len(layers) - 1), 3)

    if kind == "head":  # deterministic, RoI sampling included
        again = write_layers(
            inspect_step(model, inputs, layers, score_thresh=0.0, class_names=["rect", "ellipse"]),
            layers,
            str(tmp_path / "again"),
            score_thresh=0.0,
        )
        for k in paths:
            with open(paths[k], "rb") as a, open(again[k], "rb") as b:
                assert a.read() == b.read(), k


def _cli():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import visualize as cli
    finally:
        sys.path.pop(0)
    return cli


def test_command_line_and_unsupported_layer(tiny_cfg, tmp_path):
    cfg = _fitnet(tiny_cfg, tmp_path)
    config = tmp_path / "fitnet.yaml"
    config.write_text(cfg.dump())
    cli = _cli()
    out = tmp_path / "out"
    common = ["--config-file", str(config), "--output", str(out)]
    paths = cli.main(common + ["--image-id", "1", "--layers", "gt,predictions"])
    assert sorted(paths) == ["combined", "gt", "predictions"]
    assert all(os.path.isfile(p) for p in paths.values())
    assert _png(paths["gt"]).shape[:2] == (96, 128)
    again = cli.main(common[:-1] + [str(tmp_path / "again"), "--image-id", "1"])
    for k in ("gt", "predictions"):  # the random initial student is the same in every call
        with open(paths[k], "rb") as a, open(again[k], "rb") as b:
            assert a.read() == b.read(), k
    assert sorted(again) == ["combined", "gt", "predictions", "student_pos"]
    with pytest.raises(ValueError) as e:
        cli.main(common + ["--layers", "gt,ld_regions,head_rois"])
    message = str(e.value)
    assert "['ld_regions', 'head_rois']" in message
    assert "FeatureMimicDistiller" in message
    assert "it has gt, student_pos, predictions" in message
    with pytest.raises(ValueError, match="valid layers: gt, student_pos"):
        cli.main(common + ["--layers", "energy"])
    with pytest.raises(ValueError, match="outside data set"):
        cli.main(common + ["--image-index", "99"])
