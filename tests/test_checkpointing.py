"""Loading rules, strict evaluation and export, atomic checkpoints and fault-tolerant resume."""

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

import lgdkd.modeling  # noqa: F401
from lgdkd.checkpoint import StrictLoadError, atomic_save, read_checkpoint_file
from lgdkd.engine import Trainer
from lgdkd.engine.checkpointer import FROZEN_KEY, load_for_evaluation
from lgdkd.engine.optim import per_parameter_clipping
from lgdkd.export import export_student


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _teacher_files(cfg, tmp_path, seed=1):
    """A teacher config (the same tiny detector as ``cfg``) and random weights for it."""
    tcfg = cfg.clone()
    tcfg.DATASETS.NUM_CLASSES_FROM_DATA = False
    torch.manual_seed(seed)
    model = build_model(tcfg)
    cfg_file, weights = str(tmp_path / "teacher.yaml"), str(tmp_path / "teacher.pth")
    with open(cfg_file, "w") as f:
        f.write(tcfg.dump())
    torch.save({"model": model.state_dict()}, weights)
    return cfg_file, weights


def _distill(cfg, teacher):
    """``cfg`` as the student of a FitNet run from ``teacher`` (config, weights)."""
    cfg = cfg.clone()
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = cfg.MODEL.META_ARCHITECTURE
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, cfg.MODEL.DISTILL.TEACHER.WEIGHTS = teacher
    cfg.MODEL.DISTILL.DISTILLERS = ["FeatureMimicDistiller"]
    return cfg


def _train(cfg, resume=False):
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _model(path):
    return read_checkpoint_file(path)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]


# ------------------------------------------------------------------------------------------
# MODEL.WEIGHTS initialises the student only
# ------------------------------------------------------------------------------------------
def _imagenet_style_pkl(cfg, path, seed=7):
    """A detectron2-format backbone file (detectron2's ResNet names, ``matching_heuristics``)
    as pretrained_backbones/convert_torchvision_resnet.py writes, with random values."""
    import pickle

    torch.manual_seed(seed)
    bottom_up = build_model(cfg).backbone.bottom_up
    state = {k: v.numpy() for k, v in bottom_up.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test", "matching_heuristics": True}, f)
    return state


def test_model_weights_initialise_the_student_only(tiny_cfg, tmp_path):
    """The teacher has the student's backbone names: loading MODEL.WEIGHTS into the whole
    DistillationDetector (detectron2's way) cannot tell student and teacher keys apart."""
    student = tiny_cfg("retinanet")
    cfg = _distill(student, _teacher_files(student, tmp_path))
    pkl = str(tmp_path / "R-18-backbone.pkl")
    backbone = _imagenet_style_pkl(student, pkl)
    cfg.MODEL.WEIGHTS = pkl
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.checkpointer.model
    got = model.student.backbone.bottom_up.state_dict()
    for k, v in backbone.items():
        assert torch.equal(got[k], torch.as_tensor(v)), k
    teacher = _model(cfg.MODEL.DISTILL.TEACHER.WEIGHTS)
    for k, v in model.teacher.detector.state_dict().items():
        assert torch.equal(v, teacher[k]), k

    # a distillation checkpoint as MODEL.WEIGHTS: its student initialises the student
    ckpt = str(tmp_path / "distilled.pth")
    torch.save({"model": model.state_dict()}, ckpt)
    cfg.MODEL.WEIGHTS = ckpt
    plain = student.clone()
    plain.MODEL.WEIGHTS = ckpt
    trainer = Trainer(plain)
    trainer.resume_or_load(resume=False)
    _assert_same(trainer.checkpointer.model.state_dict(), model.student.state_dict())


# ------------------------------------------------------------------------------------------
# Frozen teachers stay out of checkpoints; resume checks their file
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_frozen_teacher_not_saved_and_resume_checks_its_file(tiny_cfg, tmp_path):
    student = tiny_cfg("retinanet")
    student.DATASETS.TEST = ()
    teacher = _teacher_files(student, tmp_path)
    cfg = _distill(student, teacher)
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.OUTPUT_DIR = str(tmp_path / "straight")
    _train(cfg)
    final = read_checkpoint_file(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert not any(k.startswith("teacher.") for k in final["model"])
    assert any(k.startswith("student.") for k in final["model"])
    assert any(k.startswith("distillers.") for k in final["model"])  # the 1x1 adapters
    assert final[FROZEN_KEY]["teacher."]["path"] == os.path.abspath(teacher[1])

    # resume from iteration 2 (model_final removed) gives the straight run exactly
    cfg.OUTPUT_DIR = str(tmp_path / "resumed")
    cfg.SOLVER.MAX_ITER = 2
    _train(cfg)
    os.remove(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    cfg.SOLVER.MAX_ITER = 4
    assert _train(cfg, resume=True).start_iter == 2
    _assert_same(
        _model(tmp_path / "straight" / "model_final.pth"),
        _model(tmp_path / "resumed" / "model_final.pth"),
    )

    # the teacher file changed since: --resume refuses and names it
    good = torch.load(teacher[1], weights_only=False)
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in good["model"].items()}
    torch.save({"model": changed}, teacher[1])
    with pytest.raises(StrictLoadError, match="teacher.pth.*changed"):
        Trainer(cfg).resume_or_load(resume=True)
    torch.save(good, teacher[1])

    # a checkpoint of the older layout (teacher inside, no fingerprint) still resumes ...
    old = read_checkpoint_file(os.path.join(cfg.OUTPUT_DIR, "model_0000001.pth"))
    old.pop(FROZEN_KEY)
    old["model"].update({f"teacher.detector.{k}": v for k, v in good["model"].items()})
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    torch.save(old, old_dir / "model_0000001.pth")
    (old_dir / "last_checkpoint").write_text("model_0000001.pth")
    cfg.OUTPUT_DIR = str(old_dir)
    _train(cfg, resume=True)
    _assert_same(
        _model(tmp_path / "straight" / "model_final.pth"), _model(old_dir / "model_final.pth")
    )
    # ... unless its teacher differs from the file
    old["model"].update({f"teacher.detector.{k}": v for k, v in changed.items()})
    torch.save(old, old_dir / "model_0000001.pth")
    (old_dir / "last_checkpoint").write_text("model_0000001.pth")
    os.remove(old_dir / "model_final.pth")
    with pytest.raises(StrictLoadError, match="holds a teacher that differs"):
        Trainer(cfg).resume_or_load(resume=True)


# ------------------------------------------------------------------------------------------
# Crash safety
# ------------------------------------------------------------------------------------------
def test_atomic_save_leaves_the_old_file_on_a_crash(tmp_path, monkeypatch):
    path = str(tmp_path / "model_final.pth")
    atomic_save({"model": {"w": torch.ones(3)}}, path)

    def crash(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # a kill during the write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint_file(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no temporary file left


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_resume_skips_a_damaged_checkpoint_and_repairs_the_run(tiny_cfg, tmp_path, damage, caplog):
    """A finished run whose model_final.pth was damaged (0 bytes or truncated): --resume names
    it, falls back to the newest readable checkpoint, redoes the lost iterations and writes a
    model_final.pth equal to the undamaged one."""
    cfg = tiny_cfg("retinanet")
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 3
    _train(cfg)
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    good = _model(final)
    with open(final, "r+b") as f:
        f.truncate(0 if damage == "empty" else os.path.getsize(final) // 2)
    trainer = _train(cfg, resume=True)
    assert trainer.start_iter == 3  # model_0000002.pth
    assert "model_final.pth" in caplog.text and "next older checkpoint" in caplog.text
    _assert_same(good, _model(final))


def test_resume_repairs_a_finished_run_without_retraining(tiny_cfg, tmp_path):
    """The newest readable checkpoint is the last iteration's: model_final.pth is rewritten
    from it, nothing is trained again."""
    cfg = tiny_cfg("retinanet")
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    _train(cfg)
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    good = _model(final)
    open(final, "wb").close()
    trainer = _train(cfg, resume=True)
    assert trainer.start_iter == 2
    _assert_same(good, _model(final))


# ------------------------------------------------------------------------------------------
# Strict evaluation and export
# ------------------------------------------------------------------------------------------
def test_evaluation_weights_are_strict(tiny_cfg, tmp_path):
    student = tiny_cfg("retinanet")
    cfg = _distill(student, _teacher_files(student, tmp_path))
    distill_model = build_model(cfg)
    ckpt = str(tmp_path / "model_final.pth")
    torch.save({"model": distill_model.state_dict(), "iteration": 5}, ckpt)

    # a distillation checkpoint under the plain student config: its student is evaluated
    plain = build_model(student)
    assert load_for_evaluation(plain, ckpt) == "student of a distillation checkpoint"
    _assert_same(plain.state_dict(), distill_model.student.state_dict())
    # ... and under its own distillation config
    assert load_for_evaluation(build_model(cfg), ckpt) == "distillation model"

    # weights of another class count: refused, the mismatched keys named
    other = student.clone()
    other.MODEL.RETINANET.NUM_CLASSES = 5
    other.DATASETS.NUM_CLASSES_FROM_DATA = False
    with pytest.raises(StrictLoadError, match=r"shape mismatch: head.cls_score"):
        load_for_evaluation(build_model(other), ckpt)
    # the distillation checkpoint under a config it does not fit: the message says what to run
    (tmp_path / "config.yaml").write_text(cfg.dump())
    with pytest.raises(StrictLoadError, match=r"--config-file .*config.yaml --eval-only"):
        load_for_evaluation(build_model(other), ckpt)
    # ImageNet backbone weights are not a trained detector
    pkl = str(tmp_path / "backbone.pkl")
    _imagenet_style_pkl(student, pkl)
    with pytest.raises(StrictLoadError, match="not a trained detector"):
        load_for_evaluation(plain, pkl)
    # an unreadable file is named with the reason
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(StrictLoadError, match=r"empty.pth.*empty \(0 bytes\)"):
        load_for_evaluation(plain, str(empty))


@pytest.mark.slow
def test_eval_only_refuses_weights_that_do_not_fit(tiny_cfg, run_train_net, tmp_path):
    cfg = tiny_cfg("retinanet")
    weights = str(tmp_path / "five_classes.pth")
    other = cfg.clone()
    other.MODEL.RETINANET.NUM_CLASSES = 5
    other.DATASETS.NUM_CLASSES_FROM_DATA = False
    torch.save({"model": build_model(other).state_dict()}, weights)
    config = tmp_path / "plain.yaml"
    config.write_text(cfg.dump())
    out = run_train_net(
        "--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights, expect_rc=1
    )
    assert "train_net.py: error:" in out and "head.cls_score.weight" in out
    assert "Traceback" not in out


def test_export_checks_the_weights_against_the_config(tiny_cfg, tmp_path):
    student = tiny_cfg("retinanet")
    cfg = _distill(student, _teacher_files(student, tmp_path))
    ckpt = str(tmp_path / "model_final.pth")
    torch.save({"model": build_model(cfg).state_dict()}, ckpt)
    export_student(cfg, ckpt, str(tmp_path / "ok"))
    other = cfg.clone()
    other.MODEL.RETINANET.NUM_CONVS = 2
    with pytest.raises(
        StrictLoadError, match=r"missing in the file: head.bbox_subnet.2.bias.*head.cls_subnet.2"
    ):
        export_student(other, ckpt, str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad" / "model_student.pth")


# ------------------------------------------------------------------------------------------
# Gradient clipping skips parameters without a gradient
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["value", "norm"])
def test_per_parameter_clipping_skips_parameters_without_gradient(kind):
    torch.manual_seed(0)
    used, unused = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    optimizer = per_parameter_clipping(torch.optim.SGD, kind, 0.05)(
        list(used.parameters()) + list(unused.parameters()), lr=1.0
    )
    (used(torch.randn(8, 4)) * 10).sum().backward()
    expected = {}
    for name, p in used.named_parameters():
        g = p.grad.clone()
        if kind == "value":
            g = g.clamp(-0.05, 0.05)
        else:
            g = g * min(1.0, 0.05 / (float(g.norm()) + 1e-6))
        expected[name] = p.detach() - g
    before = {n: p.detach().clone() for n, p in unused.named_parameters()}
    optimizer.step()
    for name, p in used.named_parameters():
        assert torch.allclose(p, expected[name], atol=1e-7), name
    for name, p in unused.named_parameters():
        assert torch.equal(p, before[name]), name


def test_unreadable_teacher_file_is_named_with_the_reason(tiny_cfg, tmp_path):
    student = tiny_cfg("retinanet")
    cfg = _distill(student, _teacher_files(student, tmp_path))
    weights = cfg.MODEL.DISTILL.TEACHER.WEIGHTS
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 3)
    with pytest.raises(StrictLoadError, match=r"teacher weights .*teacher.pth.*truncated"):
        build_model(cfg)
    open(weights, "wb").close()
    with pytest.raises(StrictLoadError, match=r"teacher weights .*teacher.pth.*empty \(0 bytes\)"):
        build_model(cfg)
