"""The seed-study engine behind projects/*/deepforest_seeds.py (tools/seed_runs.py): which runs
train, which distil from the teacher, and the table of finished runs."""

import argparse
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

import seed_runs  # noqa: E402


def _finish(out_dir, ap, s_iter=1.0):
    """What train_net.py leaves behind after a finished, evaluated run."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 9, "time": s_iter}) + "\n")
        f.write(json.dumps({"bbox/AP": ap, "bbox/AP50": 3 * ap, "bbox/AP75": ap / 2}) + "\n")
    open(os.path.join(out_dir, "model_final.pth"), "w").close()


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(config, seed, out_dir, opts=(), tag="seeds"):
        calls.append((os.path.basename(config), seed, list(opts)))
        _finish(out_dir, ap=10.0 + seed)

    monkeypatch.setattr(seed_runs, "train", train)
    return calls


def _args(tmp_path, seeds=(1, 2)):
    parser = argparse.ArgumentParser()
    seed_runs.add_teacher_args(parser, str(tmp_path / "teacher.yaml"))
    parser.add_argument("--output", default=str(tmp_path / "out"))
    return parser.parse_args(["--seeds", *map(str, seeds)])


def test_run_comparison_routes_the_teacher_and_skips_finished_runs(tmp_path, fake_train):
    args = _args(tmp_path)
    base, kd = str(tmp_path / "base.yaml"), str(tmp_path / "kd.yaml")
    _finish(os.path.join(args.output, "base", "seed1"), ap=7.0)  # finished earlier
    text = seed_runs.run_comparison(args, [base, kd], [kd], "t")

    teacher_weights = os.path.join(args.output, "teacher", "seed1", "model_final.pth")
    kd_opts = [
        "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        str(tmp_path / "teacher.yaml"),
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        teacher_weights,
    ]
    assert fake_train == [
        ("teacher.yaml", 1, []),
        ("base.yaml", 2, []),
        ("kd.yaml", 1, kd_opts),
        ("kd.yaml", 2, kd_opts),
    ]
    assert "| teacher | 1 | 11.0 |" in text
    assert "| base | 2 | 9.5 ± 3.5 |" in text  # seeds 7.0 (earlier) and 12.0
    assert "| kd | 2 | 11.5 ± 0.7 |" in text
    with open(os.path.join(args.output, "summary.md")) as f:
        assert f.read() == text

    fake_train.clear()
    assert seed_runs.run_comparison(args, [base, kd], [kd], "t") == text
    assert fake_train == []  # nothing trains twice


def test_run_comparison_without_a_distilling_student_trains_no_teacher(tmp_path, fake_train):
    args = _args(tmp_path, (1,))
    base = str(tmp_path / "base.yaml")
    text = seed_runs.run_comparison(args, [base], [str(tmp_path / "kd.yaml")], "t")
    assert fake_train == [("base.yaml", 1, [])]
    assert "teacher" not in text
