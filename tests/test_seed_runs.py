"""The seed-study engine behind tools/deepforest_study.py (tools/seed_runs.py) and what it
reports with (lgdkd.evaluation): the statistics of two arms over the same seeds and their
verdicts, the run keys that decide which finished runs are reused, the routing of the teacher,
and the sanity gates."""

import argparse
import importlib.util
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import seed_runs  # noqa: E402

from lgdkd.evaluation import gates, stats  # noqa: E402


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "p, df, table",
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 10, 2.2281),
        (0.95, 30, 1.6973),
        (0.995, 5, 4.0321),
    ],
)
def test_t_quantile_matches_the_table(p, df, table):
    assert stats.t_quantile(p, df) == pytest.approx(table, abs=1e-4)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-table, abs=1e-4)
    assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_cdf_closed_forms():
    assert stats.t_cdf(0.0, 3) == 0.5
    # df 1 is the Cauchy distribution: F(t) = 1/2 + atan(t) / pi
    for t in (-3.0, 0.5, 1.0, 7.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    # df 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-2.0, 0.3, 4.0):
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_paired_comparison_on_hand_made_numbers():
    c = stats.paired_comparison({1: 10.0, 2: 11.0, 3: 12.0}, {1: 12.0, 2: 13.5, 3: 14.0})
    assert c.seeds == (1, 2, 3) and c.n == 3
    assert c.deltas == (2.0, 2.5, 2.0)
    assert c.mean_delta == pytest.approx(13 / 6)
    # sd of (2, 2.5, 2) = sqrt(1/12); half width = t(0.975, 2) * sd / sqrt(3) = 4.302653 / 6
    assert c.std_delta == pytest.approx(math.sqrt(1 / 12))
    half = 4.302653 / 6
    assert c.ci == pytest.approx((13 / 6 - half, 13 / 6 + half), abs=1e-6)
    # variances 1 and 13/12: pooled sqrt(25/24)
    assert c.pooled_std == pytest.approx(math.sqrt(25 / 24))
    # Welch: t = (13/6) / sqrt(1/3 + 13/36) = 2.6, df = 3.9936 (scipy.stats.ttest_ind: 0.060144)
    assert c.welch_p == pytest.approx(0.0601441, abs=1e-6)
    assert c.verdict == "gain shown"  # 2.1667 > 2 x 1.0206 and the CI is above 0


def test_welch_p_by_hand_and_edge_cases():
    # a = (1, 3): mean 2, var 2; b = (0, 0): var 0 -> se 1, t 2, df 1 (Cauchy tail)
    assert stats.welch_p([1.0, 3.0], [0.0, 0.0]) == pytest.approx(
        1 - 2 / math.pi * math.atan(2.0), abs=1e-12
    )
    assert stats.welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert stats.welch_p([2.0, 2.0], [1.0, 1.0]) == 0.0
    assert stats.welch_p([1.0], [1.0, 2.0]) is None


def test_statistics_agree_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4.5, 7, 25):
        for p in (0.9, 0.975, 0.999):
            assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), abs=1e-8)
    a, b = [31.2, 29.8, 33.0, 30.1], [28.0, 30.5, 27.9]
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert stats.welch_p(a, b) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize(
    "baseline, arm, verdict",
    [
        ((10.0, 11.0, 12.0), (12.0, 13.5, 14.0), "gain shown"),
        ((12.0, 13.5, 14.0), (10.0, 11.0, 12.0), "loss shown"),
        # Δ (1, 1.2, 0.9): CI [0.65, 1.41] excludes 0, but the seeds spread by ~10
        ((10.0, 20.0, 30.0), (11.0, 21.2, 30.9), "inconclusive"),
        ((30.0, 20.0, 10.0), (29.0, 18.8, 9.1), "inconclusive"),
        # Δ (1, -1, 0.5): the CI contains 0
        ((10.0, 11.0, 12.0), (11.0, 10.0, 12.5), "not shown"),
        ((10.0,), (15.0,), "not shown (one seed)"),
    ],
)
def test_verdict_branches(baseline, arm, verdict):
    c = stats.paired_comparison(dict(enumerate(baseline)), dict(enumerate(arm)))
    assert c.verdict == verdict
    if len(baseline) == 1:
        assert c.ci is None and c.welch_p is None and c.pooled_std is None


def test_verdict_rule_boundaries():
    # |Δ| must exceed 2 x pooled std strictly; the CI must exclude 0 on the side of Δ
    assert stats.verdict(2.0, (1.0, 3.0), 1.0) == "inconclusive"
    assert stats.verdict(2.01, (1.0, 3.0), 1.0) == "gain shown"
    assert stats.verdict(2.01, (-0.1, 4.0), 1.0) == "not shown"
    assert stats.verdict(-2.01, (-3.0, -1.0), 1.0) == "loss shown"
    assert stats.verdict(-2.01, (-4.0, 0.1), 1.0) == "not shown"
    assert stats.verdict(1.0, None, None) == "not shown (one seed)"


def test_arms_with_different_seeds_are_refused():
    with pytest.raises(ValueError, match=r"only in the baseline \[3\], only in the arm \[4\]"):
        stats.paired_comparison({1: 1.0, 2: 2.0, 3: 3.0}, {1: 1.0, 2: 2.0, 4: 3.0})
    with pytest.raises(ValueError, match="at least one seed"):
        stats.paired_comparison({}, {})
    with pytest.raises(ValueError, match="needs finite values; got arm seed 2: nan"):
        stats.paired_comparison({1: 1.0, 2: 2.0}, {1: 1.0, 2: float("nan")})


# --------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------
BASELINE_AT_10 = {"iteration": 9, "loss_cls": 0.6, "loss_box_reg": 0.5, "grad_norm": 1.0}


def test_collapse_gate_fires_on_a_collapse():
    distill = {
        "iteration": 9,
        "loss_cls": 0.5,
        "loss_box_reg": 0.5,
        "loss_distill_ld": 100.0,
        "grad_norm": 20.0,
    }
    g = gates.collapse_gate(distill, BASELINE_AT_10)
    assert g.passed is False and g.status == "fail"
    assert g.numbers["task_loss"] == pytest.approx(1.0)
    assert g.numbers["distill_losses"] == {"loss_distill_ld": 100.0}
    assert g.numbers["grad_ratio"] == pytest.approx(20.0)
    assert "loss_distill_ld 100 > task loss 1 (100x)" in str(g)
    assert "grad_norm 20 = 20x the baseline's 1 (> 5x)" in str(g)


def test_collapse_gate_passes_a_healthy_pair_and_says_when_it_cannot_check():
    healthy = {
        "iteration": 9,
        "loss_cls": 0.5,
        "loss_box_reg": 0.5,
        "loss_distill_ld": 0.3,
        "loss_distill_ld_vlr": 0.2,
        "grad_norm": 1.5,
    }
    g = gates.collapse_gate(healthy, BASELINE_AT_10)
    assert g.passed is True and g.numbers["grad_ratio"] == pytest.approx(1.5)
    # each distillation term on its own against the task loss
    one_large = dict(healthy, loss_distill_ld=1.2)
    assert gates.collapse_gate(one_large, BASELINE_AT_10).passed is False
    no_norm = {k: v for k, v in healthy.items() if k != "grad_norm"}
    g = gates.collapse_gate(no_norm, BASELINE_AT_10)
    assert g.passed is None and g.status == "cannot be checked"
    assert "grad_norm not logged by the distillation run" in str(g)
    assert gates.collapse_gate(dict(no_norm, loss_distill_ld=5.0), BASELINE_AT_10).passed is False
    assert gates.collapse_gate(None, BASELINE_AT_10).passed is None


def test_collapse_gate_reads_the_runs_metrics(tmp_path):
    def write(folder, records):
        os.makedirs(folder)
        with open(os.path.join(folder, "metrics.json"), "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.write('{"iteration": 29, "loss_')  # a record cut short

    kd, base = str(tmp_path / "kd"), str(tmp_path / "base")
    write(
        kd,
        [
            {"iteration": 4, "loss_cls": 1.0, "loss_distill_ld": 0.1, "grad_norm": 1.0},
            {"iteration": 9, "loss_cls": 1.0, "loss_distill_ld": 100.0, "grad_norm": 20.0},
            {"iteration": 19, "loss_cls": 1.0, "loss_distill_ld": 0.1, "grad_norm": 1.0},
            {"bbox/AP": 10.0},
        ],
    )
    write(base, [{"iteration": 9, "loss_cls": 1.1, "grad_norm": 1.0}])
    assert len(gates.read_metrics(kd)) == 4
    assert gates.training_record(gates.read_metrics(kd))["iteration"] == 9
    assert gates.training_record(gates.read_metrics(kd), iteration=12)["iteration"] == 19
    assert gates.training_record(gates.read_metrics(kd), iteration=40) is None
    g = gates.collapse_gate_for_runs(kd, base)
    assert g.passed is False and g.numbers["iteration"] == 9


def test_gap_gate():
    # gap 40 - 30 = 10; seed std 1
    g = gates.gap_gate(40.0, [30.0, 31.0, 29.0], expected_share=0.3)
    assert g.passed is True
    assert g.numbers["gap"] == pytest.approx(10.0)
    assert g.numbers["expected_gain"] == pytest.approx(3.0)
    assert g.numbers["threshold"] == pytest.approx(2.0)
    g = gates.gap_gate(40.0, [30.0, 31.0, 29.0], expected_share=0.2)
    assert g.passed is False and "2 <= 2 x seed std 1 = 2" in str(g)
    assert gates.gap_gate(40.0, [30.0], 0.3).passed is None
    with pytest.raises(ValueError):
        gates.gap_gate(40.0, [30.0, 31.0], 0.0)


# --------------------------------------------------------------------------------------------
# Run keys
# --------------------------------------------------------------------------------------------
def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def _student(tmp_path, teacher_weights="t.pth"):
    teacher = _write(tmp_path / "teacher.yaml", "SOLVER:\n  BASE_LR: 0.02\n")
    _write(tmp_path / "t.pth", "teacher weights v1")
    return teacher, _write(
        tmp_path / "kd.yaml",
        "MODEL:\n  DISTILL:\n    TEACHER:\n      NAME: PretrainedTeacher\n"
        f"      CONFIG_FILE: {teacher}\n      WEIGHTS: {tmp_path / teacher_weights}\n",
    )


def test_run_key_follows_the_resolved_config(tmp_path):
    config = _write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LR: 0.01\n")
    key = seed_runs.run_key(config)
    assert len(key) == 12 and int(key, 16) >= 0
    assert seed_runs.run_key(config) == key
    # neither the seed nor the output folder is part of the key
    assert seed_runs.run_key(config, ["SEED", "7", "OUTPUT_DIR", str(tmp_path / "x")]) == key
    # a comment does not change the resolved config
    _write(tmp_path / "base.yaml", "# lr\nSOLVER:\n  BASE_LR: 0.01\n")
    assert seed_runs.run_key(config) == key
    assert seed_runs.run_key(config, ["SOLVER.BASE_LR", "0.02"]) != key
    _write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LR: 0.02\n")
    assert seed_runs.run_key(config) != key
    assert seed_runs.run_key(config) == seed_runs.run_key(config, ["SOLVER.BASE_LR", "0.02"])


def test_run_key_follows_weights_and_teacher_files(tmp_path):
    teacher, kd = _student(tmp_path)
    key = seed_runs.run_key(kd)
    inputs = seed_runs.key_inputs(kd)
    files = inputs["files"]
    assert files["MODEL.DISTILL.TEACHER.WEIGHTS"] is not None
    assert files["MODEL.DISTILL.TEACHER.CONFIG_FILE"]["config"]["SOLVER"]["BASE_LR"] == 0.02

    _write(tmp_path / "t.pth", "teacher weights v2")  # the teacher was retrained
    key2 = seed_runs.run_key(kd)
    assert key2 != key
    _write(tmp_path / "t.pth", "teacher weights v1")
    assert seed_runs.run_key(kd) == key

    _write(tmp_path / "teacher.yaml", "SOLVER:\n  BASE_LR: 0.03\n")  # the teacher's recipe
    assert seed_runs.run_key(kd) != key
    _write(tmp_path / "teacher.yaml", "SOLVER:\n  BASE_LR: 0.02\n")
    assert seed_runs.run_key(kd) == key
    _write(tmp_path / "teacher.yaml", "# edited\nSOLVER:\n  BASE_LR: 0.02\n")  # its content
    assert seed_runs.run_key(kd) != key
    _write(tmp_path / "teacher.yaml", "SOLVER:\n  BASE_LR: 0.02\n")

    # the student's own weights files, and a teacher config's own weights files
    _write(tmp_path / "init.pth", "init v1")
    with_init = ["MODEL.DISTILL.STUDENT_INIT_WEIGHTS", str(tmp_path / "init.pth")]
    key_init = seed_runs.run_key(kd, with_init)
    _write(tmp_path / "init.pth", "init v2")
    assert seed_runs.run_key(kd, with_init) != key_init
    _write(tmp_path / "backbone.pth", "backbone v1")
    _write(tmp_path / "teacher.yaml", f"MODEL:\n  WEIGHTS: {tmp_path / 'backbone.pth'}\n")
    key_backbone = seed_runs.run_key(kd)
    _write(tmp_path / "backbone.pth", "backbone v2")
    assert seed_runs.run_key(kd) != key_backbone


def test_run_key_of_a_missing_weights_file_changes_when_it_appears(tmp_path):
    _, kd = _student(tmp_path, teacher_weights="later.pth")
    key = seed_runs.run_key(kd)
    assert seed_runs.key_inputs(kd)["files"]["MODEL.DISTILL.TEACHER.WEIGHTS"] is None
    _write(tmp_path / "later.pth", "weights")
    assert seed_runs.run_key(kd) != key


def test_paths_inside_the_repository_are_written_relative_to_it(tmp_path):
    config = _write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LR: 0.01\n")
    inputs = seed_runs.key_inputs(config, ["MODEL.WEIGHTS", os.path.join(ROOT, "no", "w.pth")])
    assert inputs["config"]["MODEL"]["WEIGHTS"] == os.path.join("no", "w.pth")
    assert seed_runs.run_key(config, ["MODEL.WEIGHTS", os.path.join("no", "w.pth")]) == (
        seed_runs.run_key(config, ["MODEL.WEIGHTS", os.path.join(ROOT, "no", "w.pth")])
    )


# --------------------------------------------------------------------------------------------
# Studies: reuse, routing, tables
# --------------------------------------------------------------------------------------------
AP = {  # fake final AP per config name and seed
    "teacher": {1: 20.0},
    "base": {1: 11.0, 2: 12.0, 3: 13.0},
    "kd": {1: 13.1, 2: 13.9, 3: 15.0},
}


def _finish(out_dir, ap, s_iter=1.0, distill=False):
    """What train_net.py leaves behind after a finished, evaluated run."""
    os.makedirs(out_dir, exist_ok=True)
    train = {"iteration": 9, "time": s_iter, "loss_cls": 1.0, "grad_norm": 1.0}
    if distill:
        train.update(loss_distill_ld=0.4, grad_norm=1.3)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        f.write(json.dumps(train) + "\n")
        f.write(json.dumps({"bbox/AP": ap, "bbox/AP50": 3 * ap, "bbox/AP75": ap / 2}) + "\n")
    with open(os.path.join(out_dir, "model_final.pth"), "w") as f:
        f.write(f"weights of {out_dir}")


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(config, seed, out_dir, opts=(), tag="seeds"):
        name = os.path.splitext(os.path.basename(config))[0]
        calls.append((name, seed, list(opts)))
        _finish(out_dir, AP.get(name, {}).get(seed, 10.0 + seed), distill="kd" in name)

    monkeypatch.setattr(seed_runs, "train", train)
    return calls


def _configs(tmp_path):
    teacher = _write(tmp_path / "teacher.yaml", "SOLVER:\n  BASE_LR: 0.02\n")
    base = _write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LR: 0.01\n")
    kd = _write(tmp_path / "kd.yaml", "SOLVER:\n  BASE_LR: 0.01\n  WARMUP_ITERS: 5\n")
    return teacher, base, kd


def _args(tmp_path, seeds=(1, 2, 3)):
    parser = argparse.ArgumentParser()
    seed_runs.add_teacher_args(parser, str(tmp_path / "teacher.yaml"))
    parser.add_argument("--output", default=str(tmp_path / "out"))
    return parser.parse_args(["--seeds", *map(str, seeds)])


def _key_dirs(output, name):
    return sorted(d for d in os.listdir(os.path.join(output, name)) if len(d) == 12)


def test_run_comparison_routes_the_teacher_and_reuses_runs_of_the_same_key(tmp_path, fake_train):
    teacher, base, kd = _configs(tmp_path)
    args = _args(tmp_path)
    _finish(os.path.join(args.output, "base", "seed1"), ap=7.0)  # the unkeyed layout
    text = seed_runs.run_comparison(args, [base, kd], [kd], "t")

    (tkey,) = _key_dirs(args.output, "teacher")
    teacher_weights = os.path.join(args.output, "teacher", tkey, "seed1", "model_final.pth")
    kd_opts = [
        "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        teacher,
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        teacher_weights,
    ]
    assert fake_train == [  # seed by seed, so that a stopped study holds complete pairs
        ("teacher", 1, []),
        ("base", 1, []),  # the unkeyed run is not reused
        ("kd", 1, kd_opts),
        ("base", 2, []),
        ("kd", 2, kd_opts),
        ("base", 3, []),
        ("kd", 3, kd_opts),
    ]
    (bkey,) = _key_dirs(args.output, "base")
    (kkey,) = _key_dirs(args.output, "kd")
    assert tkey == seed_runs.run_key(teacher)
    assert bkey == seed_runs.run_key(base)
    assert kkey == seed_runs.run_key(kd, kd_opts)
    with open(os.path.join(args.output, "kd", kkey, "key.json")) as f:
        assert json.load(f)["key"] == kkey

    assert f"| teacher | {tkey} | 1 | 20.0 |" in text
    assert f"| base | {bkey} | 3 | 12.0 ± 1.0 | 36.0 ± 3.0 |" in text
    assert f"| kd | {kkey} | 3 | 14.0 ± 1.0 |" in text
    assert "| kd vs base | AP50 (primary) | 39.3 / 41.7 / 45.0 | 33.0 / 36.0 / 39.0 |" in text
    assert "| +6.3 / +5.7 / +6.0 | +6.00 [+5.25, +6.75] |" in text
    assert "| kd vs base | AP |" in text
    assert f"kd (key {kkey}) vs base (key {bkey}), AP50: gain shown" in text
    assert "kd vs base, seed 1: pass: loss_distill_ld 0.4 <= task loss 1 (0.4x); grad_norm" in text
    assert "base: runs of the unkeyed layout" in text and "(seeds 1;" in text
    assert os.path.isdir(os.path.join(args.output, "base", "seed1"))  # kept
    with open(os.path.join(args.output, "summary.md")) as f:
        assert f.read() == text

    fake_train.clear()
    assert seed_runs.run_comparison(args, [base, kd], [kd], "t") == text
    assert fake_train == []  # nothing trains twice


def test_an_edited_config_or_teacher_trains_anew_and_keeps_the_old_runs(tmp_path, fake_train):
    teacher, base, kd = _configs(tmp_path)
    args = _args(tmp_path, (1, 2))
    seed_runs.run_comparison(args, [base, kd], [kd], "t")
    (old_kd,) = _key_dirs(args.output, "kd")

    _write(tmp_path / "kd.yaml", "SOLVER:\n  BASE_LR: 0.01\n  WARMUP_ITERS: 6\n")
    fake_train.clear()
    text = seed_runs.run_comparison(args, [base, kd], [kd], "t")
    assert [(n, s) for n, s, _ in fake_train] == [("kd", 1), ("kd", 2)]
    assert len(_key_dirs(args.output, "kd")) == 2  # the old runs stay
    assert "kd: older results exist under other keys, not used" in text
    assert f"{old_kd} (seeds 1, 2)" in text

    _write(tmp_path / "teacher.yaml", "SOLVER:\n  BASE_LR: 0.03\n")  # a new teacher recipe
    fake_train.clear()
    seed_runs.run_comparison(args, [base, kd], [kd], "t")
    assert [(n, s) for n, s, _ in fake_train] == [("teacher", 1), ("kd", 1), ("kd", 2)]

    # the teacher's weights change under the same key (retrained by hand): students train anew
    (tkey, _) = sorted(
        _key_dirs(args.output, "teacher"), key=lambda k: k != seed_runs.run_key(teacher)
    )
    _write(os.path.join(args.output, "teacher", tkey, "seed1", "model_final.pth"), "retrained")
    fake_train.clear()
    seed_runs.run_comparison(args, [base, kd], [kd], "t")
    assert [(n, s) for n, s, _ in fake_train] == [("kd", 1), ("kd", 2)]


def test_the_teacher_is_chosen_on_the_dev_split_then_trained_on_train(tmp_path, fake_train):
    teacher, base, kd = _configs(tmp_path)
    long = _write(tmp_path / "teacher_long.yaml", "SOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: 9\n")
    parser = argparse.ArgumentParser()
    seed_runs.add_teacher_args(parser, teacher, long)
    parser.add_argument("--output", default=str(tmp_path / "out"))
    args = parser.parse_args(["--seeds", "1", "2", "--choose-teacher"])
    AP["teacher_long"] = {1: 25.0}  # better on dev (3 x 25 AP50 against 3 x 20)
    try:
        text = seed_runs.run_comparison(args, [base, kd], [kd], "t")
    finally:
        del AP["teacher_long"]
    dev = list(seed_runs.DEV_SPLIT_OPTS)
    assert fake_train[:3] == [
        ("teacher", 1, dev),
        ("teacher_long", 1, dev),
        ("teacher_long", 1, []),
    ]
    (tkey,) = _key_dirs(args.output, "teacher_long")
    weights = os.path.join(args.output, "teacher_long", tkey, "seed1", "model_final.pth")
    assert fake_train[3:] == [
        ("base", 1, []),
        (
            "kd",
            1,
            ["MODEL.DISTILL.TEACHER.CONFIG_FILE", long, "MODEL.DISTILL.TEACHER.WEIGHTS", weights],
        ),
        ("base", 2, []),
        (
            "kd",
            2,
            ["MODEL.DISTILL.TEACHER.CONFIG_FILE", long, "MODEL.DISTILL.TEACHER.WEIGHTS", weights],
        ),
    ]
    assert "AP50: teacher 60.0, teacher_long 75.0; chosen: teacher_long" in text
    assert os.path.isdir(os.path.join(args.output, "teacher_choice", "teacher_long"))
    # a tie goes to the first candidate listed
    AP["teacher_long"] = {1: 20.0}
    try:
        best, _ = seed_runs.choose_teacher(args, str(tmp_path / "tie"), "t")
    finally:
        del AP["teacher_long"]
    assert best == teacher


def test_controls_get_their_own_comparison(tmp_path, fake_train):
    _, base, kd = _configs(tmp_path)
    control = _write(tmp_path / "control.yaml", "SOLVER:\n  BASE_LR: 0.01\n  WARMUP_ITERS: 4\n")
    text = seed_runs.seed_table(
        [base, control, kd], [1, 2, 3], str(tmp_path / "out"), controls={kd: control}
    )
    head, controls = text.split("against the controls, same seeds")
    assert "| kd vs base | AP50 (primary) |" in head
    assert "| control vs base | AP50 (primary) |" in head
    assert (
        "| kd vs control | AP50 (primary) | 39.3 / 41.7 / 45.0 | 33.0 / 36.0 / 39.0 |" in controls
    )
    assert "kd vs base" not in controls
    assert "), AP50: gain shown" in controls


def test_run_comparison_without_a_distilling_student_trains_no_teacher(tmp_path, fake_train):
    _, base, kd = _configs(tmp_path)
    args = _args(tmp_path, (1,))
    text = seed_runs.run_comparison(args, [base], [kd], "t")
    assert fake_train == [("base", 1, [])]
    assert "teacher" not in text and "vs" not in text


def test_seed_table_with_one_seed_and_own_baselines(tmp_path, fake_train):
    names = ("base", "kd", "base2", "kd2")
    configs = [
        _write(tmp_path / f"{n}.yaml", f"SOLVER:\n  BASE_LR: 0.0{i + 1}\n")
        for i, n in enumerate(names)
    ]
    base, kd, base2, kd2 = configs
    text = seed_runs.seed_table(
        configs, [1], str(tmp_path / "out"), baselines={kd: base, kd2: base2}, primary="AP"
    )
    assert "| kd vs base | AP (primary) |" in text
    assert "| kd2 vs base2 | AP (primary) |" in text
    assert "| kd2 vs base2 | AP50 |" in text
    assert ", AP: not shown (one seed)" in text
    assert "| config | key | seeds | AP | AP50 | AP75 | AP per seed | s/iter |" in text


def _study():
    path = os.path.join(ROOT, "tools", "deepforest_study.py")
    spec = importlib.util.spec_from_file_location("deepforest_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lgd_and_ld_studies_key_their_real_configs(tmp_path, fake_train):
    out = str(tmp_path / "lgd")
    _study().main(["lgd", "--methods", "retinanet_lgd", "--seeds", "1", "--output", out])
    assert [n for n, _, _ in fake_train] == ["retinanet_EffLite0", "retinanet_EffLite0_lgd"]
    with open(os.path.join(out, "summary.md")) as f:
        assert "| retinanet_EffLite0_lgd vs retinanet_EffLite0 | AP50 (primary) |" in f.read()

    fake_train.clear()
    out = str(tmp_path / "ld")
    _study().main(["ld", "--seeds", "1", "--output", out])
    assert [n for n, _, _ in fake_train] == [
        "gfl_EffLite0_teacher",
        "gfl_EffLite0",
        "gfl_EffLite0_ld",
    ]
    (tkey,) = _key_dirs(out, "gfl_EffLite0_teacher")
    (kkey,) = _key_dirs(out, "gfl_EffLite0_ld")
    with open(os.path.join(out, "gfl_EffLite0_ld", kkey, "key.json")) as f:
        files = json.load(f)["inputs"]["files"]
    assert files["MODEL.DISTILL.TEACHER.WEIGHTS"] is not None  # the teacher trained here
    teacher_file = files["MODEL.DISTILL.TEACHER.CONFIG_FILE"]
    assert teacher_file["config"]["SOLVER"]["MAX_ITER"] == 240


def test_a_study_adds_each_arms_baseline_and_compares_it_with_its_control(tmp_path, fake_train):
    out = str(tmp_path / "lad")
    text = _study().main(["lad", "--methods", "lad", "boxloss", "--seeds", "1", "--output", out])
    assert [n for n, _, _ in fake_train] == [
        "paa_EffLite0_teacher",
        "paa_EffLite0",
        "paa_EffLite0_boxloss",
        "paa_EffLite0_lad",
    ]
    teacher_opts = [opts for n, _, opts in fake_train if n == "paa_EffLite0_lad"][0]
    assert "MODEL.DISTILL.TEACHER.WEIGHTS" in teacher_opts  # the arm distils from the teacher
    assert [opts for n, _, opts in fake_train if n == "paa_EffLite0_boxloss"] == [[]]
    assert "| paa_EffLite0_lad vs paa_EffLite0 | AP50 (primary) |" in text
    assert "against the controls, same seeds" in text
    assert "| paa_EffLite0_lad vs paa_EffLite0_boxloss | AP50 (primary) |" in text

    fake_train.clear()  # an arm that needs no teacher trains none
    _study().main(["head", "--methods", "assist", "--seeds", "1", "--output", str(tmp_path / "h")])
    assert [n for n, _, _ in fake_train] == ["retinanet_EffLite0", "retinanet_EffLite0_assist"]


def _inference(run_dir, gt_path, dets):
    folder = os.path.join(run_dir, "inference", "dev")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "coco_instances_results.json"), "w") as f:
        json.dump(dets, f)
    with open(os.path.join(folder, "ground_truth.json"), "w") as f:
        json.dump({"dataset": "dev", "json_file": gt_path}, f)


def test_bootstrap_lines_read_each_runs_detections_and_ground_truth(tmp_path):
    images = [{"id": i, "width": 100, "height": 100} for i in range(6)]
    anns = [
        {"id": i + 1, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30], "iscrowd": 0}
        for i in range(6)
    ]
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    gt_path = str(tmp_path / "gt.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f)

    def dets(hits):  # a hit on images < hits, a miss ranked above it on the others
        out = []
        for i in range(6):
            box = [10, 10, 30, 30] if i < hits else [60, 60, 20, 20]
            out.append({"image_id": i, "category_id": 1, "bbox": box, "score": 0.9})
        return out

    arms = []
    for name, hits in (("base", 3), ("arm", 6)):
        arm = seed_runs.Arm(name + ".yaml", name, [], "k" * 12, str(tmp_path / name))
        for seed in (1, 2):
            _inference(arm.run_dir(seed), gt_path, dets(hits))
            arm.records[seed] = {"bbox/AP50": 0.0}
        arms.append(arm)
    (line,) = seed_runs.bootstrap_lines(arms, {"arm.yaml": "base.yaml"}, "AP50", replicates=200)
    # base: the 3 hits (images 0-2) rank first among equal scores, so its precision is 1 up to
    # recall 0.5: 51 of the 101 recall points; the arm finds all 6: AP50 100
    delta = 100.0 - 100.0 * 51 / 101
    assert seed_runs.run_matches(arms[0].run_dir(1), "AP50")[0].image_ids == list(range(6))
    assert line.startswith(f"arm vs base, AP50: mean Δ {delta:+.2f} [")
    assert line.endswith("over 6 images and 2 seed pairs")
    lo = float(line.split("[")[1].split(",")[0])
    assert 0 < lo <= delta
    # a run without the files is named
    os.remove(os.path.join(arms[1].run_dir(2), "inference", "dev", "ground_truth.json"))
    (line,) = seed_runs.bootstrap_lines(arms, {"arm.yaml": "base.yaml"}, "AP50", replicates=10)
    assert line == "arm vs base: no per-image detections and ground_truth.json in arm seed 2"


def test_a_run_without_detections_counts_as_ap_0_with_a_note(tmp_path):
    run = str(tmp_path / "seed1")
    _finish(run, float("nan"))  # detectron2's record when the model predicted nothing
    rec, _ = seed_runs.final_record(run)
    assert rec["bbox/AP"] == rec["bbox/AP50"] == rec["bbox/AP75"] == 0.0
    assert rec["no_detections"] is True
    arm = seed_runs.Arm("c.yaml", "c", [], "k" * 12, str(tmp_path))
    seed_runs.collect_result(arm, 1)
    seed_runs.collect_result(arm, 1)
    assert arm.notes == [
        "c seed 1: no detections at the final evaluation (detectron2 reports NaN AP); "
        "counted as AP 0"
    ]
    # a normal record is left alone
    _finish(str(tmp_path / "seed2"), 12.5)
    assert "no_detections" not in seed_runs.collect_result(arm, 2)
    with pytest.raises(SystemExit, match="has no final checkpoint"):
        seed_runs.collect_result(arm, 3)
