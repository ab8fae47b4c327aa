"""The proving-ground study (tools/proving_ground.py) with a fake train_net.py: the real configs
of configs/ProvingGround are keyed (resolved), never trained. Covered: the tiers' arms and
baselines, the teacher's weights reaching the arms and their keys, gates (a), (b) and (c), the
verdict table on hand-made APs, the refusal of different seed sets, the compute-matched
baselines, --final's test evaluations and --tiny's options."""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import proving_ground as pg  # noqa: E402
import seed_runs  # noqa: E402

from lgdkd.checkpoint import file_fingerprint  # noqa: E402
from lgdkd.engine import load_config  # noqa: E402

SEEDS = (1, 2, 3)
AP = {  # fake final dev AP per config name and seed (teachers: seed 1)
    "retinanet_EffLite2_teacher": {1: 30.0},
    "faster_rcnn_EffLite2_teacher": {1: 32.0},
    "gfl_EffLite2_teacher": {1: 31.0},
    "paa_EffLite2_teacher": {1: 33.0},
    "retinanet_EffLite0": {1: 20.0, 2: 21.0, 3: 22.0},
    "retinanet_EffLite0_lr01": {1: 20.0, 2: 21.0, 3: 22.0},
    "gfl_EffLite0": {1: 20.0, 2: 20.5, 3: 21.0},
    "paa_EffLite0": {1: 21.0, 2: 22.0, 3: 23.0},
    "retinanet_EffLite0_head": {1: 23.0, 2: 24.0, 3: 25.0},  # +3 AP on every seed
    "retinanet_EffLite0_fitnet": {1: 20.5, 2: 21.2, 3: 22.1},
    "paa_EffLite0_boxloss": {1: 21.1, 2: 21.9, 3: 23.2},
    "paa_EffLite0_lad": {1: 24.0, 2: 25.0, 3: 26.0},
}
S_ITER = {  # fake s/iter: the arms 1.5 (by default), the baselines and the control 1.0
    "retinanet_EffLite0": 1.0,
    "retinanet_EffLite0_lr01": 1.0,
    "gfl_EffLite0": 1.0,
    "paa_EffLite0": 1.0,
    "paa_EffLite0_boxloss": 1.0,
}
TEACHERS = [
    "retinanet_EffLite2_teacher",
    "faster_rcnn_EffLite2_teacher",
    "gfl_EffLite2_teacher",
    "paa_EffLite2_teacher",
]
BASELINES = ["retinanet_EffLite0", "retinanet_EffLite0_lr01", "gfl_EffLite0", "paa_EffLite0"]
CPU_ARMS = [
    "retinanet_EffLite0_fitnet",
    "retinanet_EffLite0_assist",
    "retinanet_EffLite0_head",
    "gfl_EffLite0_ld",
    "paa_EffLite0_boxloss",
    "paa_EffLite0_lad",
]


def _opt(opts, key, default):
    opts = list(opts)
    return type(default)(opts[opts.index(key) + 1]) if key in opts else default


def _finish(out_dir, name, seed, opts):
    """What train_net.py leaves behind after a finished, evaluated run."""
    os.makedirs(out_dir, exist_ok=True)
    ap = AP.get(name, {}).get(seed, 20.0 + seed)
    max_iter = _opt(opts, "SOLVER.MAX_ITER", 200)
    records = []
    for it in (3, 9):
        rec = {"iteration": it, "time": S_ITER.get(name, 1.5), "loss_cls": 1.0, "grad_norm": 1.0}
        if name in pg.ARMS and pg.ARMS[name].distills:
            collapse = name == "retinanet_EffLite0_head" and seed == 2
            rec.update(loss_distill_akd=50.0 if collapse else 0.4, grad_norm=1.3)
        records.append(rec)
    final = {"iteration": max_iter, "bbox/AP": ap, "bbox/AP50": 2 * ap, "bbox/AP75": ap / 2}
    if name == "retinanet_EffLite0_lgd":  # the implicit teacher, evaluated at START_ITER too
        start = _opt(opts, "MODEL.DISTILL.SCHEDULE.START_ITER", 100)
        records.append(
            {
                "iteration": start - 1,
                "bbox/AP": ap - 8,
                "teacher/proving_ground_dev/bbox/AP": ap - 3,
            }
        )
        final["teacher/proving_ground_dev/bbox/AP"] = ap + 10
    records.append(final)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(out_dir, "model_final.pth"), "w") as f:
        f.write(f"weights of {out_dir}")


class FakeTrain:
    """seed_runs.train's stand-in: records each call and writes a finished run."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, seed, out_dir, opts=(), tag="seeds", env=None):
        name = os.path.splitext(os.path.basename(config))[0]
        self.calls.append(dict(name=name, seed=seed, opts=list(opts), env=env, out=out_dir))
        print(f"[fake] train {name} seed {seed}", flush=True)
        _finish(out_dir, name, seed, opts)

    def names(self):
        return [(c["name"], c["seed"]) for c in self.calls]


@pytest.fixture
def fake_train(monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(seed_runs, "train", fake)
    return fake


def _main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        text = pg.main(argv)
    return text, out.getvalue()


@pytest.fixture(scope="module")
def cpu_study(tmp_path_factory):
    """The CPU tier trained once with the fake train (seeds 1 2 3, one run at a time)."""
    output = str(tmp_path_factory.mktemp("pg"))
    fake = FakeTrain()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(seed_runs, "train", fake)
        text, stdout = _main(["--tier", "cpu", "--output", output, "--jobs", "1"])
    return dict(output=output, text=text, stdout=stdout, fake=fake)


def _key_dir(output, name):
    (key,) = [d for d in os.listdir(os.path.join(output, name)) if len(d) == 12]
    return os.path.join(output, name, key)


# --------------------------------------------------------------------------------------------
# Arms and tiers
# --------------------------------------------------------------------------------------------
def test_the_tiers_arms_baselines_and_teachers():
    cpu = pg.Tier("cpu", SEEDS, 1, "out", 2, 1)
    gpu = pg.Tier("gpu", (1, 2, 3, 4), 1, "out", 16, 1)
    assert cpu.arms == CPU_ARMS
    assert len(gpu.arms) == 11 and set(CPU_ARMS) < set(gpu.arms)
    assert set(gpu.arms) - set(CPU_ARMS) == {
        "retinanet_EffLite0_lgd",
        "retinanet_EffLite0_tfhead",
        "paa_EffLite0_solad",
        "paa_EffLite0_softlabel",
        "paa_EffLite0_colad",
    }
    for name, m in pg.ARMS.items():
        assert os.path.isfile(pg.config_path(name)), name
        assert m.baseline in BASELINES
        assert m.teacher is None or m.teacher in TEACHERS
        assert (m.share is None) == (m.teacher is None)
    shares = {m.method: m.share for m in pg.ARMS.values()}
    assert shares == {
        "FitNet": 0.13,
        "LGD": None,
        "HEAD Assist": 0.2,
        "HEAD": 0.5,
        "LD": 0.08,
        "LAD box-loss control": None,
        "LAD": 0.55,
        "SoLAD": 0.55,
        "Soft-Label": 0.5,
        "CoLAD": 0.3,
        "TF-HEAD": 0.25,
    }
    assert pg.ARMS["paa_EffLite0_lad"].also_against == ("paa_EffLite0_boxloss",)
    assert not pg.ARMS["retinanet_EffLite0_assist"].loads_teacher
    assert not pg.ARMS["paa_EffLite0_colad"].loads_teacher
    assert pg.tier_options(cpu) == []
    assert pg.tier_options(gpu) == ["MODEL.DEVICE", "cuda"]
    assert cpu.env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_train_passes_the_environment_to_train_net(tmp_path, monkeypatch):
    seen = {}

    def call(cmd, cwd, stdout, stderr, env):
        seen.update(cmd=cmd, env=env)
        return 0

    monkeypatch.setattr(seed_runs.subprocess, "call", call)
    seed_runs.train("c.yaml", 1, str(tmp_path / "run"), ["A", "1"], env={"OMP_NUM_THREADS": "3"})
    assert seen["env"]["OMP_NUM_THREADS"] == "3" and "PATH" in seen["env"]
    seed_runs.train("c.yaml", 1, str(tmp_path / "run"))
    assert seen["env"] is None  # this process's environment


def test_every_arm_trains_with_its_baselines_solver_and_input():
    """A paired difference measures the method only when the arm and the baseline it is
    compared with share the schedule, the batch and the input (HEAD's arms and their lr-0.01
    baseline included)."""

    def resolved(name):
        args = argparse.Namespace(config_file=pg.config_path(name), opts=[])
        return load_config(args)

    keys = (
        "SOLVER.BASE_LR",
        "SOLVER.MAX_ITER",
        "SOLVER.IMS_PER_BATCH",
        "SOLVER.WARMUP_ITERS",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
        "INPUT.MIN_SIZE_TRAIN",
        "DATASETS.TRAIN",
        "SEED",
    )

    def pick(cfg):
        out = {}
        for k in keys:
            v = cfg
            for part in k.split("."):
                v = v[part]
            out[k] = v
        return out

    base = {b: pick(resolved(b)) for b in BASELINES}
    for name, m in pg.ARMS.items():
        for b in (m.baseline,) + m.also_against:
            want = base[b] if b in base else pick(resolved(b))
            assert pick(resolved(name)) == want, (name, b)
    assert base["retinanet_EffLite0_lr01"]["SOLVER.BASE_LR"] == 0.01
    assert base["retinanet_EffLite0"]["SOLVER.BASE_LR"] == 0.02


# --------------------------------------------------------------------------------------------
# The CPU tier
# --------------------------------------------------------------------------------------------
def test_cpu_tier_trains_teachers_and_baselines_first_then_the_arms(cpu_study):
    calls = cpu_study["fake"].names()
    first = [(t, 1) for t in TEACHERS] + [(b, s) for b in BASELINES for s in SEEDS]
    assert calls[: len(first)] == first
    assert calls[len(first) :] == [(a, s) for a in CPU_ARMS for s in SEEDS]
    assert all(
        c["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for c in cpu_study["fake"].calls
    )
    for c in cpu_study["fake"].calls:
        assert c["out"].startswith(os.path.join(cpu_study["output"], "cpu", c["name"]) + os.sep)
    # gate (a) is printed once the baselines exist, before the first student trains
    stdout = cpu_study["stdout"]
    assert stdout.index("gate (a), before the students:") < stdout.index(
        "[fake] train retinanet_EffLite0_fitnet seed 1"
    )
    assert stdout.index("[fake] train paa_EffLite0 seed 3") < stdout.index("gate (a), before")


def test_teacher_weights_reach_the_arms_and_their_keys(cpu_study):
    output = os.path.join(cpu_study["output"], "cpu")
    calls = {(c["name"], c["seed"]): c for c in cpu_study["fake"].calls}
    for arm, teacher in [
        ("retinanet_EffLite0_fitnet", "retinanet_EffLite2_teacher"),
        ("retinanet_EffLite0_head", "faster_rcnn_EffLite2_teacher"),
        ("gfl_EffLite0_ld", "gfl_EffLite2_teacher"),
        ("paa_EffLite0_lad", "paa_EffLite2_teacher"),
    ]:
        weights = os.path.join(_key_dir(output, teacher), "seed1", "model_final.pth")
        opts = calls[(arm, 1)]["opts"]
        assert opts == ["MODEL.DISTILL.TEACHER.WEIGHTS", weights]
        folder = _key_dir(output, arm)
        assert os.path.basename(folder) == seed_runs.run_key(pg.config_path(arm), opts)
        with open(os.path.join(folder, "key.json")) as f:
            files = json.load(f)["inputs"]["files"]
        assert files["MODEL.DISTILL.TEACHER.WEIGHTS"] == file_fingerprint(weights)["sha256"]
    for arm in ("retinanet_EffLite0_assist", "paa_EffLite0_boxloss"):
        assert calls[(arm, 1)]["opts"] == []  # trains without a teacher
    for name in TEACHERS:
        assert calls[(name, 1)]["opts"] == [] and (name, 2) not in calls


def test_gates_a_and_c_from_fake_records(cpu_study):
    text = cpu_study["text"]
    # FitNet: 0.13 x (30 - 21) = 1.17 <= 2 x 1
    assert (
        "retinanet_EffLite0_fitnet (FitNet): teacher retinanet_EffLite2_teacher AP 30.0, "
        "retinanet_EffLite0 AP 21.0, share 0.13: fail: expected gain 0.13 x gap 9 = 1.17 <= "
        "2 x seed std 1 = 2" in text
    )
    # HEAD: 0.5 x (32 - 21) = 5.5 > 2
    assert "retinanet_EffLite0_head (HEAD): teacher faster_rcnn_EffLite2_teacher AP 32.0" in text
    assert "share 0.5: pass: expected gain 0.5 x gap 11 = 5.5 > 2 x seed std 1 = 2" in text
    assert "teacher faster_rcnn_EffLite2_teacher (the arm trains without it) AP 32.0" in text
    # the same lines were printed before the students
    before = cpu_study["stdout"].split("gate (a), before the students:")[1].split("[fake]")[0]
    assert "retinanet_EffLite0_fitnet (FitNet)" in before and ": fail: " in before
    assert "paa_EffLite0_boxloss" not in before  # the control has no teacher
    # gate (c): every seed of every distilling arm against the same seed of its baseline
    assert (
        "retinanet_EffLite0_head vs retinanet_EffLite0_lr01, seed 2: fail: loss_distill_akd 50 > "
        "task loss 1 (50x)" in text
    )
    assert "retinanet_EffLite0_head vs retinanet_EffLite0_lr01, seed 1: pass:" in text
    for arm in ("retinanet_EffLite0_fitnet", "gfl_EffLite0_ld", "paa_EffLite0_lad"):
        base = pg.ARMS[arm].baseline
        for seed in SEEDS:
            assert f"{arm} vs {base}, seed {seed}: pass: loss_distill_akd 0.4 <= task loss" in text
    assert "paa_EffLite0_boxloss vs paa_EffLite0, seed" not in text  # not a distilling arm


def test_the_verdict_table_on_hand_made_aps(cpu_study):
    text = cpu_study["text"]
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:4]): line
        for line in text.splitlines()
        if line.startswith("| ") and " | " in line and "`" in line
    }
    head = rows[("retinanet_EffLite0_head", "HEAD", "retinanet_EffLite0_lr01")]
    assert (
        "| 32.0 | 24.0 ± 1.0 | 21.0 ± 1.0 | +3.00 [+3.00, +3.00] | gain shown "
        "| a pass; c fail (seed 2), pass (seeds 1, 3) |" in head
    )
    head_dir = _key_dir(os.path.join(cpu_study["output"], "cpu"), "retinanet_EffLite0_head")
    assert (
        "`python train_net.py --config-file configs/ProvingGround/retinanet_EffLite0_head.yaml "
        "MODEL.DISTILL.TEACHER.WEIGHTS " in head
    )
    assert f"SEED <k> OUTPUT_DIR {head_dir}/seed<k>`" in head
    fitnet = rows[("retinanet_EffLite0_fitnet", "FitNet", "retinanet_EffLite0")]
    assert "| not testable here (gate a); computed: " in fitnet and "| a fail;" in fitnet
    lad = rows[("paa_EffLite0_lad", "LAD", "paa_EffLite0")]
    assert "| 33.0 | 25.0 ± 1.0 | 22.0 ± 1.0 | +3.00 [+3.00, +3.00] | gain shown | a pass;" in lad
    assert ("paa_EffLite0_lad", "LAD", "paa_EffLite0_boxloss (control)") in rows
    control = rows[("paa_EffLite0_boxloss", "LAD box-loss control", "paa_EffLite0")]
    assert "| – | 22.1 ± 1.1 | 22.0 ± 1.0 |" in control and control.split("|")[9].strip() == "–"
    assert (
        "(gap only)"
        in rows[("retinanet_EffLite0_assist", "HEAD Assist", "retinanet_EffLite0_lr01")]
    )
    assert len(rows) == 7  # six arms, LAD twice
    # the detailed comparison on AP (primary) and AP50, and the per-run tables
    assert (
        "| retinanet_EffLite0_head vs retinanet_EffLite0_lr01 | AP (primary) | 23.0 / 24.0 / 25.0 "
        in text
    )
    assert "| retinanet_EffLite0_head vs retinanet_EffLite0_lr01 | AP50 |" in text
    assert "| paa_EffLite0_lad vs paa_EffLite0_boxloss | AP (primary) |" in text
    assert "| retinanet_EffLite2_teacher |" in text and "| AP per seed | s/iter |" in text
    assert seed_runs.VERDICT_RULE in text
    with open(os.path.join(cpu_study["output"], "cpu", "summary.md")) as f:
        assert f.read() == text


def test_a_second_run_trains_nothing(cpu_study, fake_train):
    text, _ = _main(["--tier", "cpu", "--output", cpu_study["output"], "--jobs", "1"])
    assert fake_train.calls == []
    assert text == cpu_study["text"]


def test_different_seed_sets_are_refused(cpu_study, fake_train):
    tier, _ = pg.parse_args(["--tier", "cpu", "--output", cpu_study["output"]])
    study = pg.run_study(tier)
    assert fake_train.calls == []
    arm = study.arms["gfl_EffLite0_ld"]
    study.arms["gfl_EffLite0_ld"] = dataclasses.replace(
        arm, records={s: r for s, r in arm.records.items() if s != 3}
    )
    with pytest.raises(
        SystemExit, match=r"same seeds \[1, 2, 3\].*gfl_EffLite0_ld \(seeds \[1, 2\]\)"
    ):
        pg.report(study)
    with pytest.raises(SystemExit):
        pg.parse_args(["--tier", "cpu", "--seeds", "1", "1", "2"])
    with pytest.raises(SystemExit):
        pg.parse_args(["--tier", "cpu", "--tiny"])


# --------------------------------------------------------------------------------------------
# Compute-matched baselines
# --------------------------------------------------------------------------------------------
def test_compute_matched_max_iter_from_s_iter():
    base = pg.config_path("retinanet_EffLite0")  # 200 it, step at 160, LOG_PERIOD 10, ckpt 100
    opts, max_iter = pg.compute_matched_options(base, ["MODEL.DEVICE", "cuda"], 1.63)
    assert max_iter == 330  # 326 rounded to a multiple of LOG_PERIOD
    assert opts == [
        "MODEL.DEVICE",
        "cuda",
        "SOLVER.MAX_ITER",
        "330",
        "SOLVER.STEPS",
        "(264,)",  # 160 x 330 / 200: 80 % of the schedule, as in the baseline
        "SOLVER.CHECKPOINT_PERIOD",
        "163",
    ]
    assert pg.compute_matched_options(base, [], 1.02) == (None, 200)  # the baseline itself
    teacher = pg.config_path("paa_EffLite2_teacher")  # 600 iterations, step at 500
    opts, max_iter = pg.compute_matched_options(teacher, [], 1.5)
    assert max_iter == 900 and opts[opts.index("SOLVER.STEPS") + 1] == "(750,)"
    assert pg.resolve(teacher, opts).SOLVER.STEPS == (750,)
    arm = seed_runs.Arm("a", "a", [], "k", "f", s_iter={1: 1.6, 2: 1.7})
    baseline = seed_runs.Arm("b", "b", [], "k", "f", s_iter={1: 1.0, 2: 1.1})
    assert pg.s_iter_ratio(arm, baseline) == pytest.approx(1.65 / 1.05)
    assert pg.s_iter_ratio(arm, dataclasses.replace(baseline, s_iter={1: float("nan")})) != (
        pg.s_iter_ratio(arm, baseline)
    )


# --------------------------------------------------------------------------------------------
# --tiny
# --------------------------------------------------------------------------------------------
def test_tiny_gpu_tier_options_compute_matching_and_gate_b(tmp_path, fake_train):
    text, _ = _main(["--tier", "gpu", "--tiny", "--output", str(tmp_path)])
    output = str(tmp_path / "tiny")
    assert sorted(os.listdir(tmp_path)) == ["tiny"]
    calls = fake_train.calls
    assert {c["seed"] for c in calls if c["name"] not in TEACHERS} == {1, 2}
    for c in calls:
        assert c["opts"][:8] == [
            "MODEL.DEVICE",
            "cuda",
            "SOLVER.MAX_ITER",
            str(pg.TINY_ITERS) if "compute_matched" not in c["out"] else c["opts"][3],
            "SOLVER.STEPS",
            "()",
            "SOLVER.LOG_PERIOD",
            "1",
        ]
        assert c["out"].startswith(output + os.sep)
    trained = {c["name"] for c in calls if "compute_matched" not in c["out"]}
    assert trained == set(TEACHERS) | set(BASELINES) | set(pg.ARMS)
    lgd = next(c for c in calls if c["name"] == "retinanet_EffLite0_lgd")
    assert lgd["opts"][8:] == [
        "MODEL.DISTILL.SCHEDULE.START_ITER",
        "2",
        "MODEL.DISTILL.SCHEDULE.FREEZE_BACKBONE_ITERS",
        "1",
        "TEST.EVAL_PERIOD",
        "2",
    ]
    # compute-matched: the arms log 1.5 s/iter, the baselines and the control 1.0
    matched = [c for c in calls if "compute_matched" in c["out"]]
    assert {(c["name"], c["opts"][3]) for c in matched} == {(b, "6") for b in BASELINES}
    assert (
        len(matched) == len(BASELINES) * 2
    )  # one per baseline and seed: the arms share them by key
    assert "paa_EffLite0_boxloss: s/iter ratio 1.00: the baseline itself" in text
    assert "retinanet_EffLite0_fitnet: s/iter ratio 1.50: retinanet_EffLite0@6it" in text
    assert (
        "| retinanet_EffLite0_fitnet | FitNet | retinanet_EffLite0@6it (compute-matched) |" in text
    )
    assert "| paa_EffLite0_boxloss | LAD box-loss control | paa_EffLite0 |" in text
    assert text.count("\n| retinanet_EffLite0@6it | ") == 1  # one row in the runs table
    assert "MODEL.DEVICE cuda SOLVER.MAX_ITER 4 SOLVER.STEPS '()' SOLVER.LOG_PERIOD 1 " in text
    # gate (b): the implicit teacher 5 AP ahead of the student after START_ITER 2 iterations
    assert "gate (b) implicit teacher vs student at the start of distillation: pass" in text
    assert "after START_ITER 2 iterations: teacher 18.5 ± 0.7 vs student 13.5 ± 0.7" in text
    assert (
        "retinanet_EffLite0_lgd, seed 1: after 2 it teacher 18.0 vs student 13.0; after 4 it "
        in text
    )
    assert "| implicit 31.5 ± 0.7 |" in text and "b pass" in text
    # gate (c) reads the last tiny iteration
    assert "gate (c): distillation losses and grad_norm at iteration 4" in text
    # the GPU tier proper needs CUDA; --tiny does not
    if not __import__("torch").cuda.is_available():
        with pytest.raises(SystemExit, match="needs CUDA"):
            pg.main(["--tier", "gpu", "--output", str(tmp_path)])


# --------------------------------------------------------------------------------------------
# --final
# --------------------------------------------------------------------------------------------
EVAL_LOG = """[12/06 16:29:13] d2.engine.defaults INFO: Evaluation results for {ds} in csv format:
[12/06 16:29:13] d2.evaluation.testing INFO: copypaste: Task: bbox
[12/06 16:29:13] d2.evaluation.testing INFO: copypaste: AP,AP50,AP75,APs,APm,APl
[12/06 16:29:13] d2.evaluation.testing INFO: copypaste: {ap:.4f},{ap50:.4f},7.5000,1.0000,2.0000,nan
"""
TEACHER_LOG = """[12/06 16:29:20] lgdkd.engine.trainer INFO: Evaluation results of the TEACHER on \
{ds} in csv format (an oracle):
[12/06 16:29:20] d2.evaluation.testing INFO: copypaste: Task: bbox
[12/06 16:29:20] d2.evaluation.testing INFO: copypaste: AP,AP50,AP75,APs,APm,APl
[12/06 16:29:20] d2.evaluation.testing INFO: copypaste: 40.0000,60.0000,7.5000,1.0000,2.0000,nan
"""


def test_parse_eval_log():
    text = EVAL_LOG.format(ds="proving_ground_dev", ap=1.0, ap50=2.0)
    text += EVAL_LOG.format(ds="proving_ground_test", ap=18.25, ap50=36.5)
    text += TEACHER_LOG.format(ds="proving_ground_test")
    results = pg.parse_eval_log(text, "proving_ground_test")
    assert results["bbox/AP"] == 18.25 and results["bbox/AP50"] == 36.5
    assert results["teacher/proving_ground_test/bbox/AP"] == 40.0
    assert results["bbox/APl"] != results["bbox/APl"]  # nan
    assert pg.parse_eval_log(text, "proving_ground_dev") == {
        "bbox/AP": 1.0,
        "bbox/AP50": 2.0,
        "bbox/AP75": 7.5,
        "bbox/APs": 1.0,
        "bbox/APm": 2.0,
        "bbox/APl": pytest.approx(float("nan"), nan_ok=True),
    }
    # a run evaluated twice (log.txt is appended to): the last block counts
    again = text + EVAL_LOG.format(ds="proving_ground_test", ap=19.0, ap50=38.0)
    assert pg.parse_eval_log(again)["bbox/AP"] == 19.0


def test_final_evaluates_every_run_once_on_test(cpu_study, fake_train, monkeypatch):
    commands = []

    def run_command(cmd, log_path, env):
        commands.append((list(cmd), env))
        run = os.path.dirname(cmd[cmd.index("--config-file") + 1])
        rec, _ = seed_runs.final_record(run)
        out = cmd[cmd.index("OUTPUT_DIR") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "log.txt"), "a") as f:
            f.write(EVAL_LOG.format(ds="proving_ground_test", ap=rec["bbox/AP"] - 1, ap50=40.0))
        return 0

    monkeypatch.setattr(pg, "run_command", run_command)
    output = cpu_study["output"]
    text, _ = _main(["--tier", "cpu", "--output", output, "--final"])
    assert fake_train.calls == []  # --final trains nothing
    assert len(commands) == 4 + 4 * 3 + 6 * 3  # teachers, baselines, arms
    head = os.path.join(_key_dir(os.path.join(output, "cpu"), "retinanet_EffLite0_head"), "seed2")
    cmd = next(c for c, _ in commands if c[c.index("--config-file") + 1].startswith(head))
    assert cmd[1:] == [
        os.path.join(pg.ROOT, "train_net.py"),
        "--config-file",
        os.path.join(head, "config.yaml"),
        "--eval-only",
        "MODEL.WEIGHTS",
        os.path.join(head, "model_final.pth"),
        "DATASETS.TEST",
        '("proving_ground_test",)',
        "OUTPUT_DIR",
        os.path.join(head, "test_eval"),
    ]
    assert all(env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} for _, env in commands)
    with open(os.path.join(head, "test_eval", "results.json")) as f:
        assert json.load(f)["bbox/AP"] == 23.0
    assert text.startswith("# Proving ground, cpu tier, on proving_ground_test")
    assert "| 31.0 | 23.0 ± 1.0 | 20.0 ± 1.0 | +3.00 [+3.00, +3.00] | gain shown |" in text
    assert (
        "--eval-only MODEL.WEIGHTS" in text and "DATASETS.TEST '(\"proving_ground_test\",)'" in text
    )
    with open(os.path.join(output, "cpu", "summary_test.md")) as f:
        assert f.read() == text
    with open(os.path.join(output, "cpu", "summary.md")) as f:
        assert "on proving_ground_dev" in f.read()  # the dev report is left as it was

    commands.clear()
    assert _main(["--tier", "cpu", "--output", output, "--final"])[0] == text
    assert commands == []  # done once, reused


def _remove_test_evaluations(output):
    for root, dirs, _ in os.walk(output):
        if "test_eval" in dirs:
            shutil.rmtree(os.path.join(root, "test_eval"))


def test_final_keeps_gate_a_as_decided_on_dev(cpu_study, fake_train, monkeypatch):
    """On test the PAA baseline's seeds spread so far that LAD's gate (a) would fail there; the
    verdict keeps the gate decided on dev (pass) and prints the test split's for information."""
    test_ap = {"paa_EffLite0": {1: 10.0, 2: 22.0, 3: 34.0}}

    def run_command(cmd, log_path, env):
        run = os.path.dirname(cmd[cmd.index("--config-file") + 1])
        rec, _ = seed_runs.final_record(run)
        name = os.path.basename(os.path.dirname(os.path.dirname(run)))
        seed = int(os.path.basename(run)[len("seed") :])
        ap = test_ap.get(name, {}).get(seed, rec["bbox/AP"])
        out = cmd[cmd.index("OUTPUT_DIR") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "log.txt"), "a") as f:
            f.write(EVAL_LOG.format(ds="proving_ground_test", ap=ap, ap50=40.0))
        return 0

    monkeypatch.setattr(pg, "run_command", run_command)
    output = cpu_study["output"]
    _remove_test_evaluations(output)
    try:
        text, _ = _main(["--tier", "cpu", "--output", output, "--final"])
    finally:
        _remove_test_evaluations(output)
    lad = [line for line in text.splitlines() if line.startswith("| paa_EffLite0_lad | LAD |")]
    assert len(lad) == 2  # against PAA and against the control
    assert "not testable" not in lad[0] and "| a pass;" in lad[0]
    gates = text.split("## Gates")[1].split("gate (c)")[0]
    decided, recomputed = gates.split("gate (a) recomputed on proving_ground_test")
    assert "gate (a), decided on proving_ground_dev (the verdicts use it)" in decided
    assert re.search(r"paa_EffLite0_lad \(LAD\): .*: pass:", decided)
    assert re.search(r"paa_EffLite0_lad \(LAD\): .*: fail:", recomputed)
    # FitNet's gate fails on dev (0.13 x 9 AP <= 2 x 1.0): its test verdict says so
    fitnet = next(line for line in text.splitlines() if line.startswith("| retinanet_EffLite0_fit"))
    assert "not testable here (gate a)" in fitnet


def test_final_refuses_a_tier_that_is_not_trained(tmp_path, fake_train):
    with pytest.raises(
        SystemExit, match=r"--final needs the tier's finished runs(.|\n)*train them"
    ):
        pg.main(["--tier", "cpu", "--output", str(tmp_path), "--final"])
    assert fake_train.calls == []


def test_an_evaluation_without_detections_reads_as_ap_0():
    # detectron2 writes NaN when the model predicted nothing (tiny runs, the implicit teacher
    # early in an LGD run): gate (b) reads it as AP 0 instead of failing in the statistics
    assert pg._ap(float("nan")) == 0.0 and pg._ap(12.5) == 12.5
    assert pg._teacher_ap({"teacher/proving_ground_dev/bbox/AP": float("nan")}) == 0.0
    assert pg._teacher_ap({"bbox/AP": 3.0}) is None
