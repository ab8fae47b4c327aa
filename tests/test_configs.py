"""Every config file in configs/ loads with lgdkd's keys and builds its model on the CPU."""

import glob
import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import lgdkd.modeling  # noqa: F401
from lgdkd.config import get_cfg
from lgdkd.data import apply_num_classes, register_datasets_from_cfg
from lgdkd.modeling.teachers.pretrained import build_teacher_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def load(path):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_found():
    assert len(CONFIGS) >= 15, CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_builds(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name their teachers relative to the repository root
    cfg = load(path)
    # names must be registered (COCO / VOC files are not on the test machines); class
    # counts from the data, as train_net.py's setup does
    register_datasets_from_cfg(cfg, check=False)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        assert name in DatasetCatalog.list(), name
    apply_num_classes(cfg)
    teacher = cfg.MODEL.DISTILL.TEACHER
    if teacher.NAME == "PretrainedTeacher":
        # stand-in weights for the teacher named by the config (trained ones need a run)
        assert os.path.isfile(os.path.join(ROOT, teacher.CONFIG_FILE)), teacher.CONFIG_FILE
        tcfg = build_teacher_config(cfg)
        weights = str(tmp_path / "teacher.pth")
        torch.save({"model": build_model(tcfg).state_dict()}, weights)
        cfg.MODEL.DISTILL.TEACHER.WEIGHTS = weights
    if teacher.NAME == "CoLearningTeacher":
        # its ImageNet weights (pretrained_backbones/*.pkl) need a conversion: skip them here
        assert os.path.isfile(os.path.join(ROOT, teacher.CONFIG_FILE)), teacher.CONFIG_FILE
        cfg.MODEL.DISTILL.TEACHER.OPTS = ["MODEL.WEIGHTS", ""]
    if cfg.MODEL.DISTILL.STUDENT_INIT_WEIGHTS:
        from lgdkd.modeling.meta_arch.distillation import build_student

        weights = str(tmp_path / "student_init.pth")
        torch.save({"model": build_student(cfg).state_dict()}, weights)
        cfg.MODEL.DISTILL.STUDENT_INIT_WEIGHTS = weights
    timm_weights = cfg.MODEL.TIMM.PRETRAINED
    if timm_weights.startswith("pretrained_backbones/") and not os.path.isfile(timm_weights):
        # ImageNet weights the user converts (no MobileNetV2 weights offline): random init here
        cfg.MODEL.TIMM.PRETRAINED = ""
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 0
    if cfg.MODEL.META_ARCHITECTURE == "DistillationDetector":
        assert len(model.distillers) == len(cfg.MODEL.DISTILL.DISTILLERS)
