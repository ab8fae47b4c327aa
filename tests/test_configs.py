"""Every config file in configs/ runs as a user runs it: it loads the weights it names (stand-ins
with the same key names and shapes), trains 2 iterations at a tiny input size on data with its
class count, saves its checkpoint and evaluates once (see tests/config_smoke.py)."""

import glob
import math
import os
import shutil

import pytest
import torch
from config_smoke import StandIns, run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


@pytest.fixture(scope="module")
def smoke_dirs(tmp_path_factory):
    """Stand-ins and data shared by the module's runs (several GB of stand-in weights for the
    R-101 / X-101 configs: removed when the module is done)."""
    root = tmp_path_factory.mktemp("config_smoke")
    yield StandIns(str(root / "stand_ins")), str(root / "data"), root
    shutil.rmtree(root, ignore_errors=True)


def _remove_checkpoints(folder):
    """A run's checkpoints take up to 1 GB (X-101 with optimizer state): drop them at once."""
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".pth"):
                os.remove(os.path.join(dirpath, name))


def test_configs_found():
    assert len(CONFIGS) >= 100, CONFIGS


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS)
def test_config_trains_and_evaluates(path, smoke_dirs, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name their teachers relative to the repository root
    stand_ins, data_root, root = smoke_dirs
    out = str(root / "runs" / os.path.splitext(path)[0].replace(os.sep, "_"))
    try:
        _check_run(run_config(path, stand_ins, data_root, out), out)
    finally:
        _remove_checkpoints(out)


def _check_run(run, out):
    # two finite training iterations were logged
    iters = [m for m in run.metrics if "total_loss" in m]
    assert [m["iteration"] for m in iters] == [0, 1], run.metrics
    assert all(math.isfinite(m["total_loss"]) for m in iters)
    distill = run.cfg.MODEL.META_ARCHITECTURE == "DistillationDetector"
    if distill and run.cfg.MODEL.DISTILL.DISTILLERS:
        # iteration 1 distils (schedules start there at the latest); HEAD's "Assist only" rows
        # train the assistant without a distillation term
        last = iters[-1]
        keys = [k for k in last if k.startswith(("loss_distill_", "loss_assist_"))]
        assert keys and any(last[k] != 0 for k in keys), last

    # the checkpoint holds what was trained, not a frozen teacher
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    frozen = run.cfg.MODEL.DISTILL.TEACHER.NAME == "PretrainedTeacher"
    assert not (frozen and any(k.startswith("teacher.") for k in final["model"]))

    # one evaluation (detectron2 returns one set's results unnested)
    results = run.results
    assert results, "no evaluation results"
    students = [results] if "bbox" in results else [r for k, r in results.items() if "/" not in k]
    assert students and all({"AP", "AP50"} <= set(r["bbox"]) for r in students), results
