"""Export the student of a distillation checkpoint as a stand-alone detector.

The exported ``model_student.pth`` holds only the student's weights (``student.`` prefix
removed): teacher, assigner, adapters and distillers are dropped. ``config_student.yaml`` is
the student's config. When the student is built only from detectron2 components (e.g.
RetinaNet or Faster R-CNN on a ResNet-FPN), that config holds only stock detectron2 keys: it
loads with ``detectron2.config.get_cfg().merge_from_file`` and the weights load with
``strict=True`` into ``detectron2.modeling.build_model`` without lgdkd. Students using lgdkd
components (FCOS from yacs, timm backbones) need ``import lgdkd.modeling`` and lgdkd's config.
"""

import os
from typing import Dict, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.config import get_cfg as d2_get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_model

from .checkpoint import atomic_save, atomic_write_text, check_state_dict, read_checkpoint
from .config import get_cfg as lgdkd_get_cfg
from .modeling.teachers.pretrained import build_teacher_config

__all__ = [
    "student_state_dict",
    "student_config",
    "is_stock_detectron2",
    "export_student",
    "export_teacher",
    "check_exported",
]

PREFIX = "student."


def student_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The ``student.*`` entries of a DistillationDetector state dict, without the prefix.

    A state dict without ``student.*`` keys is a plain detector's and is returned as is.
    """
    if not any(k.startswith(PREFIX) for k in state):
        return dict(state)
    return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}


def _from_detectron2(registry, name: str) -> bool:
    return name in registry and registry.get(name).__module__.startswith("detectron2.")


def is_stock_detectron2(cfg) -> bool:
    """Whether the detector of ``cfg`` (a non-distillation config) is built from detectron2
    components alone."""
    return _from_detectron2(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE) and _from_detectron2(
        BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.NAME
    )


def _copy_known(src: CfgNode, dst: CfgNode):
    for k, v in dst.items():
        if k not in src:
            continue
        if isinstance(v, CfgNode):
            _copy_known(src[k], v)
        else:
            dst[k] = src[k]


def student_config(cfg) -> CfgNode:
    """The student's own config: META_ARCHITECTURE = MODEL.DISTILL.STUDENT_META_ARCHITECTURE,
    no teacher; reduced to stock detectron2 keys when the student is stock detectron2."""
    scfg = cfg.clone()
    scfg.defrost()
    if scfg.MODEL.META_ARCHITECTURE == "DistillationDetector":
        scfg.MODEL.META_ARCHITECTURE = scfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    scfg.MODEL.WEIGHTS = ""
    if "DISTILL" in scfg.MODEL:
        scfg.MODEL.DISTILL = lgdkd_get_cfg().MODEL.DISTILL.clone()
        scfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = scfg.MODEL.META_ARCHITECTURE
    if is_stock_detectron2(scfg):
        stock = d2_get_cfg()
        _copy_known(scfg, stock)
        scfg = stock
    return scfg


def export_student(cfg, weights: str, output_dir: str) -> Tuple[str, str]:
    """Write ``model_student.pth`` and ``config_student.yaml`` to ``output_dir``.

    Args:
        cfg: the (distillation) config the checkpoint was trained with.
        weights: a checkpoint of that model (e.g. OUTPUT_DIR/model_final.pth).
    Returns:
        (weights path, config path) written.
    """
    state = student_state_dict(read_checkpoint(weights, "checkpoint to export"))
    scfg = student_config(cfg)
    check_exported(state, scfg, weights, "student")
    return _write(state, scfg, output_dir, "student")


def check_exported(state, cfg, weights: str, name: str):
    """Raise StrictLoadError unless ``state`` loads strictly into the model of ``cfg`` (the
    config being written): a missing, unexpected or mis-shaped key is named."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    check_state_dict(
        model.state_dict(),
        state,
        f"checkpoint to export ({name})",
        weights,
        f"the exported {name} ({cfg.MODEL.META_ARCHITECTURE})",
        hint="Pass the config the checkpoint was trained with (its run's config.yaml) and the "
        "checkpoint of that run.",
    )


def _write(state, cfg, output_dir: str, name: str) -> Tuple[str, str]:
    """model_<name>.pth (``state``) + config_<name>.yaml (``cfg`` pointing at it)."""
    os.makedirs(output_dir, exist_ok=True)
    w_out = os.path.join(output_dir, f"model_{name}.pth")
    c_out = os.path.join(output_dir, f"config_{name}.yaml")
    atomic_save({"model": state, "__author__": "lgdkd.export"}, w_out)
    cfg.MODEL.WEIGHTS = os.path.abspath(w_out)
    atomic_write_text(c_out, cfg.dump())
    return w_out, c_out


TEACHER_PREFIX = "teacher.detector."


def export_teacher(cfg, weights: str, output_dir: str) -> Tuple[str, str]:
    """Write the co-trained teacher of a distillation checkpoint (e.g. CoLAD's second network,
    ``teacher.detector.*``) as ``model_teacher.pth`` + ``config_teacher.yaml`` (its own config,
    MODEL.DISTILL.TEACHER.CONFIG_FILE + OPTS) to ``output_dir``."""
    state = read_checkpoint(weights, "checkpoint to export")
    state = {k[len(TEACHER_PREFIX) :]: v for k, v in state.items() if k.startswith(TEACHER_PREFIX)}
    if not state:
        raise ValueError(
            f"{weights} has no '{TEACHER_PREFIX}*' weights: only a teacher trained with the "
            "student (MODEL.DISTILL.TEACHER.NAME 'CoLearningTeacher') can be exported."
        )
    tcfg = build_teacher_config(cfg).clone()
    tcfg.defrost()
    check_exported(state, tcfg, weights, "teacher")
    return _write(state, tcfg, output_dir, "teacher")
