"""A teacher -> FitNet student chain through train_net.py and tools/export_student.py, as a user
runs it: distillation losses logged, teacher evaluated, exact resume across processes, and the
exported student evaluating to the same AP as the distillation checkpoint."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT


def _ap_line(log):
    lines = re.findall(r"copypaste: ([-\d.nan]+,[-\d.nan,]+)", log)
    assert lines, log[-3000:]
    return lines


@pytest.mark.slow
def test_teacher_student_chain(tiny_cfg, toy_datasets, run_train_net, tmp_path):
    teacher_cfg = tiny_cfg("retinanet")
    teacher_cfg.SOLVER.MAX_ITER = 4
    teacher_yaml = tmp_path / "teacher.yaml"
    teacher_yaml.write_text(teacher_cfg.dump())
    run_train_net("--config-file", teacher_yaml, "OUTPUT_DIR", tmp_path / "teacher")
    teacher_weights = tmp_path / "teacher" / "model_final.pth"

    cfg = tiny_cfg("retinanet")
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.DISTILL.TEACHER.NAME = "PretrainedTeacher"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(teacher_yaml)
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(teacher_weights)
    cfg.MODEL.DISTILL.TEACHER.EVAL = True
    cfg.MODEL.DISTILL.DISTILLERS = ["FeatureMimicDistiller"]
    cfg.MODEL.DISTILL.FEATURE_MIMIC.MASK = "gt_boxes"
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.WARMUP_ITERS = 0  # LR independent of MAX_ITER, for the resume comparison
    cfg.SOLVER.LOG_PERIOD = 1
    student_yaml = tmp_path / "student.yaml"
    student_yaml.write_text(cfg.dump())

    # straight run of 4 iterations
    straight = tmp_path / "straight"
    log = run_train_net("--config-file", student_yaml, "OUTPUT_DIR", straight)
    assert "TEACHER" in log  # the teacher's own evaluation, labelled as such
    with open(straight / "metrics.json") as f:
        metrics = [json.loads(line) for line in f]
    logged = [m for m in metrics if "loss_distill_feature_mimic" in m]
    assert len(logged) == 4 and all(m["loss_distill_feature_mimic"] > 0 for m in logged)
    assert any(k.startswith("teacher/") for m in metrics for k in m)

    # 2 iterations, then --resume to 4, in separate processes
    resumed = tmp_path / "resumed"
    run_train_net("--config-file", student_yaml, "OUTPUT_DIR", resumed, "SOLVER.MAX_ITER", 2)
    log = run_train_net("--config-file", student_yaml, "--resume", "OUTPUT_DIR", resumed)
    assert "Starting training from iteration 2" in log
    a = torch.load(straight / "model_final.pth", weights_only=False)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=False)["model"]
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]

    # export the student; --eval-only on it and on the distillation checkpoint agree
    export = tmp_path / "export"
    res = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "export_student.py")]
        + ["--config-file", str(straight / "config.yaml")]
        + ["--weights", str(straight / "model_final.pth"), "--output", str(export)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stock detectron2 model" in res.stdout
    datasets = ["DATASETS.COCO_FORMAT", str(toy_datasets.coco_format)]
    log_distill = run_train_net(
        "--config-file",
        straight / "config.yaml",
        "--eval-only",
        "MODEL.WEIGHTS",
        straight / "model_final.pth",
        "OUTPUT_DIR",
        tmp_path / "eval_distill",
        "MODEL.DISTILL.TEACHER.EVAL",
        "False",
    )
    log_export = run_train_net(
        "--config-file",
        export / "config_student.yaml",
        "--eval-only",
        "OUTPUT_DIR",
        tmp_path / "eval_export",
        *datasets,
    )
    assert _ap_line(log_distill)[-1] == _ap_line(log_export)[-1]
