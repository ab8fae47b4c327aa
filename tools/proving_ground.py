"""The proving-ground study: every distillation method of the kits against its baseline on the
proving ground (datasets/README.md, "Proving ground"), trained for several seeds, with the
sanity gates and the verdicts in one table.

    python tools/proving_ground.py --tier cpu [--seeds 1 2 3] [--jobs 2] [--output DIR]
    python tools/proving_ground.py --tier gpu [--seeds 1 2 3 4] [--jobs 16] [--threads 1]
    python tools/proving_ground.py --tier cpu --final     # the same trained runs, evaluated on test
    python tools/proving_ground.py --tier gpu --tiny      # tiny settings: the GPU tier's plumbing

Tiers (arms: :data:`ARMS`, configs in configs/ProvingGround):

* ``cpu``: the baselines (retinanet_EffLite0, gfl_EffLite0, paa_EffLite0, and
  retinanet_EffLite0_lr01 for HEAD's arms), FitNet, LD, LAD with its box-loss control, HEAD
  Assist and HEAD; 2 runs at a time by default.
* ``gpu``: every arm, each also against a compute-matched baseline (below); MODEL.DEVICE cuda,
  16 runs at a time on the one GPU by default.
* ``gpu --tiny``: the GPU tier with SOLVER.MAX_ITER 4 for every run (teachers included),
  LOG_PERIOD 1, LGD's schedule scaled to it and 2 seeds; runs on a CPU in minutes (train_net.py
  falls back to the CPU without CUDA) and writes under ``<output>/tiny``.

Runs are keyed as in tools/seed_runs.py: ``<output>/<tier>/<config name>/<key>/seed<k>``; a
finished run under the right key is reused, so the command can be stopped and started again.
Phases, each with ``--jobs`` runs at a time and OMP_NUM_THREADS = MKL_NUM_THREADS =
``--threads`` in every run's environment:

1. every teacher the tier's arms name (once, at ``--teacher-seed``) and every baseline (all
   seeds); then gate (a) is printed, before any student trains;
2. every arm, all seeds; an arm that distils from a trained teacher gets
   ``MODEL.DISTILL.TEACHER.WEIGHTS <the teacher run's model_final.pth>``, so the sha256 of the
   teacher's weights enters its key; the LGD arm also gets ``TEST.EVAL_PERIOD <START_ITER>`` so
   that its run evaluates the implicit teacher and the student where distillation starts;
3. (GPU tier) the compute-matched baselines: the family baseline's config with SOLVER.MAX_ITER
   scaled by the arm's s/iter over the baseline's (means over the seeds of their finished runs)
   and rounded to a multiple of SOLVER.LOG_PERIOD, SOLVER.STEPS and CHECKPOINT_PERIOD scaled by
   the same ratio (warm-up unchanged); keyed like any run, under ``<output>/<tier>/
   compute_matched``. A ratio that rounds to the baseline's own MAX_ITER reuses the baseline.

Gates (lgdkd/evaluation/gates.py), printed with the verdicts and never hidden:

* (a) for every arm with a teacher: is the expected share of the teacher-student gap (the
  teacher's AP, one run, against the family baseline's per-seed APs; shares in :data:`ARMS`)
  above twice the baseline's seed std? A failed gate (a) turns the arm's verdict into "not
  testable here (gate a)", the computed verdict kept beside it. Assist and CoLAD train without
  the teacher's weights: their gap is measured against the teacher of their method (HEAD's
  Faster R-CNN, LAD's PAA) all the same.
* (b) for LGD (no pretrained teacher): the implicit teacher's AP against the student's, both
  evaluated by the LGD run (TEACHER.EVAL), after SCHEDULE.START_ITER iterations and at the end;
  it passes when the teacher clearly beats the student at the start iteration (paired over the
  seeds, the verdict rule's "gain shown"). The study reports it and does not move START_ITER.
* (c) for every seed of every distillation arm, against the same seed of its family baseline:
  distillation losses and gradient norm at iteration 10 (the last iteration in --tiny).

Statistics (lgdkd/evaluation/stats.py): for each arm against each of its baselines (LAD: the
PAA baseline and the box-loss control; GPU tier: also the compute-matched baseline), on AP (the
primary metric here) and AP50: per-seed values, the paired mean difference with its 95 %
Student-t interval, Welch's p, the pooled seed std and the verdict. Every arm must hold the same
seeds (refused otherwise). The report goes to ``<output>/<tier>/summary.md`` and stdout.

``--final`` trains nothing: every run of the tier (teachers, baselines, arms, compute-matched
baselines) must be finished; each is evaluated once on proving_ground_test with
``train_net.py --config-file RUN/config.yaml --eval-only MODEL.WEIGHTS RUN/model_final.pth
DATASETS.TEST '("proving_ground_test",)' OUTPUT_DIR RUN/test_eval`` (the AP figures read from
its log into ``RUN/test_eval/results.json``, which marks it done), and the same tables are
written to ``summary_test.md``, with gate (a) as decided on the dev split (the test split's
own gate (a) printed for information). The dev split is for choices, the test split for final
tables.

GPU memory: each run holds a batch of 4 images of 256 px on EfficientNet-Lite0 / Lite2 with a
64 / 128-channel FPN, plus its own CUDA context; 16 such processes are expected to fit one GPU
with room to spare (not measured yet: watch nvidia-smi during the first run).
"""

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "tools")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import seed_runs  # noqa: E402
from seed_runs import Arm  # noqa: E402

from lgdkd.evaluation.gates import (  # noqa: E402
    GateResult,
    collapse_gate_for_runs,
    gap_gate,
    read_metrics,
)
from lgdkd.evaluation.stats import GAIN, paired_comparison  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs", "ProvingGround")
DEV, TEST = "proving_ground_dev", "proving_ground_test"
PRIMARY = "bbox/AP"
TAG = "proving-ground"
GATE_ITERATION = 10
TINY_ITERS = 4
DEFAULTS = {  # tier -> (seeds, jobs)
    "cpu": ((1, 2, 3), 2),
    "gpu": ((1, 2, 3, 4), 16),
    "tiny": ((1, 2), 2),
}

__all__ = [
    "ARMS",
    "Method",
    "Study",
    "Tier",
    "compute_matched_options",
    "evaluate_on_test",
    "gate_a",
    "gate_b",
    "gate_c",
    "main",
    "parse_eval_log",
    "report",
    "run_study",
    "test_eval_command",
    "tier_options",
]


# --------------------------------------------------------------------------------------------
# Arms
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """An arm of the study: a config of configs/ProvingGround (its file name is the arm's name).

    Attributes:
        method: the method's name.
        baseline: the family baseline's config name (gates (a) and (c), compute matching).
        teacher: the teacher config whose AP sets the gap of gate (a), or None.
        share: the method's expected share of the teacher-student gap (published gain over the
            published gap), for gate (a); None without a teacher.
        loads_teacher: the arm distils from the trained teacher (gets its weights).
        tiers: the tiers that run it.
        also_against: further baselines it is compared with (LAD: its box-loss control).
        distills: it has distillation losses (gate (c)); False for the control.
        gate_b: its teacher is trained with it (LGD): gate (b) instead of (a).
    """

    method: str
    baseline: str
    teacher: Optional[str]
    share: Optional[float]
    loads_teacher: bool = True
    tiers: Tuple[str, ...] = ("cpu", "gpu")
    also_against: Tuple[str, ...] = ()
    distills: bool = True
    gate_b: bool = False


RETINANET, GFL, PAA = "retinanet_EffLite0", "gfl_EffLite0", "paa_EffLite0"
RETINANET_LR01 = "retinanet_EffLite0_lr01"  # HEAD's arms train at lr 0.01 (the config says why)
RETINANET_T, GFL_T, PAA_T = (
    "retinanet_EffLite2_teacher",
    "gfl_EffLite2_teacher",
    "paa_EffLite2_teacher",
)
FRCNN_T = "faster_rcnn_EffLite2_teacher"
CONTROL = "paa_EffLite0_boxloss"

ARMS: Dict[str, Method] = {
    "retinanet_EffLite0_fitnet": Method("FitNet", RETINANET, RETINANET_T, 0.13),
    "retinanet_EffLite0_lgd": Method(
        "LGD", RETINANET, None, None, loads_teacher=False, tiers=("gpu",), gate_b=True
    ),
    "retinanet_EffLite0_assist": Method(
        "HEAD Assist", RETINANET_LR01, FRCNN_T, 0.2, loads_teacher=False
    ),
    "retinanet_EffLite0_head": Method("HEAD", RETINANET_LR01, FRCNN_T, 0.5),
    # TF-HEAD: +2.2 AP on the R18 RetinaNet where HEAD gives +4.4 (share 0.5): 0.25
    "retinanet_EffLite0_tfhead": Method(
        "TF-HEAD", RETINANET_LR01, FRCNN_T, 0.25, loads_teacher=False, tiers=("gpu",)
    ),
    "gfl_EffLite0_ld": Method("LD", GFL, GFL_T, 0.08),
    CONTROL: Method("LAD box-loss control", PAA, None, None, loads_teacher=False, distills=False),
    "paa_EffLite0_lad": Method("LAD", PAA, PAA_T, 0.55, also_against=(CONTROL,)),
    "paa_EffLite0_solad": Method("SoLAD", PAA, PAA_T, 0.55, tiers=("gpu",)),
    "paa_EffLite0_softlabel": Method("Soft-Label", PAA, PAA_T, 0.5, tiers=("gpu",)),
    "paa_EffLite0_colad": Method("CoLAD", PAA, PAA_T, 0.3, loads_teacher=False, tiers=("gpu",)),
}


def config_path(name: str) -> str:
    """configs/ProvingGround/<name>.yaml."""
    return os.path.join(CONFIGS, f"{name}.yaml")


def _unique(items) -> List[str]:
    return list(dict.fromkeys(i for i in items if i))


# --------------------------------------------------------------------------------------------
# Tiers
# --------------------------------------------------------------------------------------------
@dataclass
class Tier:
    """What a command line asks for.

    Attributes:
        name: "cpu", "gpu" or "tiny" (the GPU tier with tiny settings).
        seeds: the students' seeds.
        teacher_seed: the teachers' seed.
        output: the tier's folder, ``<--output>/<name>``.
        jobs: runs at a time.
        threads: OMP / MKL threads of each run.
        command: the command line that reproduces the study.
    """

    name: str
    seeds: Tuple[int, ...]
    teacher_seed: int
    output: str
    jobs: int
    threads: int
    command: str = ""

    @property
    def gpu(self) -> bool:
        """The GPU tier (tiny or not): every arm, MODEL.DEVICE cuda, compute-matched baselines."""
        return self.name in ("gpu", "tiny")

    @property
    def arms(self) -> List[str]:
        """The tier's arms, in :data:`ARMS` order."""
        tier = "gpu" if self.gpu else "cpu"
        return [name for name, m in ARMS.items() if tier in m.tiers]

    @property
    def env(self) -> Dict[str, str]:
        """The environment every run gets on top of this process's."""
        return {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}

    @property
    def gate_iteration(self) -> int:
        """The iteration gate (c) reads (10; the last one in --tiny)."""
        return TINY_ITERS if self.name == "tiny" else GATE_ITERATION


def tier_options(tier: Tier) -> List[str]:
    """The options every run of ``tier`` gets (teachers, baselines, arms)."""
    opts = []
    if tier.gpu:
        opts += ["MODEL.DEVICE", "cuda"]
    if tier.name == "tiny":
        opts += ["SOLVER.MAX_ITER", str(TINY_ITERS), "SOLVER.STEPS", "()"]
        opts += ["SOLVER.LOG_PERIOD", "1"]
    return opts


def _set(opts: Sequence[str], updates: Sequence[str]) -> List[str]:
    """``opts`` with each (key, value) of ``updates`` replacing the key's value or appended."""
    out = [str(o) for o in opts]
    for key, value in zip(updates[::2], updates[1::2]):
        for i in range(0, len(out) - 1, 2):
            if out[i] == key:
                out[i + 1] = str(value)
                break
        else:
            out += [key, str(value)]
    return out


_RESOLVED: Dict[Tuple[str, Tuple[str, ...]], object] = {}


def resolve(config: str, opts: Sequence[str] = ()):
    """The config as train_net.py resolves it (cached)."""
    from lgdkd.engine.defaults import load_config

    key = (config, tuple(str(o) for o in opts))
    if key not in _RESOLVED:
        _RESOLVED[key] = load_config(SimpleNamespace(config_file=config, opts=list(key[1])))
    return _RESOLVED[key]


def arm_options(name: str, tier: Tier, teachers: Mapping[str, Arm]) -> List[str]:
    """The options of arm ``name``: the tier's, the trained teacher's weights if it loads them,
    and for LGD the evaluation at the start of distillation (plus, in --tiny, its schedule
    scaled to the tiny run)."""
    method = ARMS[name]
    opts = tier_options(tier)
    if method.loads_teacher:
        weights = os.path.join(
            teachers[method.teacher].run_dir(tier.teacher_seed), "model_final.pth"
        )
        opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", weights]
    if method.gate_b:
        if tier.name == "tiny":
            start = TINY_ITERS // 2
            opts += ["MODEL.DISTILL.SCHEDULE.START_ITER", str(start)]
            opts += ["MODEL.DISTILL.SCHEDULE.FREEZE_BACKBONE_ITERS", "1"]
        else:
            start = resolve(config_path(name), opts).MODEL.DISTILL.SCHEDULE.START_ITER
        opts += ["TEST.EVAL_PERIOD", str(start)]
    return opts


def compute_matched_options(
    base_config: str, base_opts: Sequence[str], ratio: float
) -> Tuple[Optional[List[str]], int]:
    """The options of the baseline trained for ``ratio`` times its iterations: SOLVER.MAX_ITER
    scaled and rounded to a multiple of SOLVER.LOG_PERIOD (at least one), SOLVER.STEPS scaled by
    the rounded MAX_ITER's ratio (they keep their fraction of the schedule) and
    SOLVER.CHECKPOINT_PERIOD scaled and rounded. Returns (options, MAX_ITER); the options are
    None when MAX_ITER rounds to the baseline's own."""
    cfg = resolve(base_config, base_opts)
    period = max(1, int(cfg.SOLVER.LOG_PERIOD))
    max_iter = max(period, int(round(cfg.SOLVER.MAX_ITER * ratio / period)) * period)
    if max_iter == cfg.SOLVER.MAX_ITER:
        return None, max_iter
    scale = max_iter / cfg.SOLVER.MAX_ITER  # the steps keep their place in the schedule
    steps = tuple(int(round(s * scale)) for s in cfg.SOLVER.STEPS)
    checkpoint = max(1, int(round(cfg.SOLVER.CHECKPOINT_PERIOD * ratio)))
    updates = ["SOLVER.MAX_ITER", max_iter, "SOLVER.STEPS", repr(steps)]
    updates += ["SOLVER.CHECKPOINT_PERIOD", checkpoint]
    return _set(base_opts, updates), max_iter


def s_iter_ratio(arm: Arm, base: Arm) -> float:
    """The arm's mean s/iter over the baseline's (means over their finished runs); NaN when a
    run logged no time."""
    a, b = statistics.mean(arm.s_iter.values()), statistics.mean(base.s_iter.values())
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return float("nan")
    return a / b


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """A config to run with options for some seeds, under ``output``."""

    config: str
    output: str
    opts: Tuple[str, ...]
    seeds: Tuple[int, ...]


def _relative(path: str) -> str:
    norm = os.path.normpath(os.path.abspath(path))
    return os.path.relpath(norm, ROOT) if norm.startswith(ROOT + os.sep) else norm


def _pool(tasks, jobs: int):
    """Run the callables ``tasks``, ``jobs`` at a time; return their results in order."""
    if jobs <= 1:
        return [t() for t in tasks]
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(t) for t in tasks]
        return [f.result() for f in futures]


def run_specs(specs: Sequence[RunSpec], tier: Tier, train: bool = True) -> List[Arm]:
    """Key every spec (``seed_runs.prepare_arm``), train every (spec, seed) without a finished
    run under its key, ``tier.jobs`` at a time with ``tier.env``, and return the arms with their
    records. With ``train`` False nothing trains: a missing run stops the study.

    ``seed_runs.train_arms`` with seeds and an output folder per spec, so that one pool holds
    the teachers (one seed) and the baselines (every seed); equal specs share their runs."""
    arms, by_spec = [], {}
    for spec in specs:
        if spec not in by_spec:
            by_spec[spec] = seed_runs.prepare_arm(spec.config, spec.output, spec.opts, TAG)
        arms.append(by_spec[spec])
    pending, seen = [], set()
    for arm, spec in zip(arms, specs):
        for seed in spec.seeds:
            run = arm.run_dir(seed)
            if run not in seen and seed_runs.final_record(run)[0] is None:
                seen.add(run)
                pending.append((arm, seed))
    if pending and not train:
        missing = "\n".join(f"  {_relative(a.run_dir(s))}" for a, s in pending)
        raise SystemExit(
            f"[{TAG}] --final needs the tier's finished runs; these are missing:\n{missing}\n"
            f"train them first: {tier.command.replace(' --final', '')}"
        )

    def task(arm, seed):
        return lambda: seed_runs.train(
            arm.config, seed, arm.run_dir(seed), arm.opts, TAG, env=tier.env
        )

    _pool([task(a, s) for a, s in pending], tier.jobs)
    for arm, spec in zip(arms, specs):
        for seed in spec.seeds:
            seed_runs.collect_result(arm, seed, TAG)
    return arms


@dataclass
class Study:
    """The runs of a tier.

    Attributes:
        tier: the tier.
        teachers: teacher config name -> its arm (one seed).
        baselines: baseline config name -> its arm.
        arms: arm name -> its arm.
        matched: arm name -> its compute-matched baseline (GPU tier; the family baseline itself
            when the ratio rounds to 1; absent when s/iter is unknown).
        ratios: arm name -> its s/iter over its family baseline's (GPU tier).
        dataset: the split of the records (dev, or test with --final).
    """

    tier: Tier
    teachers: Dict[str, Arm]
    baselines: Dict[str, Arm]
    arms: Dict[str, Arm]
    matched: Dict[str, Arm] = dataclasses.field(default_factory=dict)
    ratios: Dict[str, float] = dataclasses.field(default_factory=dict)
    dataset: str = DEV

    def baseline_of(self, name: str) -> Arm:
        """The family baseline of arm ``name``."""
        return self.baselines[ARMS[name].baseline]

    def all_runs(self) -> List[Tuple[Arm, Tuple[int, ...]]]:
        """Every distinct arm of the study with its seeds."""
        out, seen = [], set()
        groups = [(a, (self.tier.teacher_seed,)) for a in self.teachers.values()]
        groups += [(a, self.tier.seeds) for a in self.baselines.values()]
        groups += [(a, self.tier.seeds) for a in self.arms.values()]
        groups += [(a, self.tier.seeds) for a in self.matched.values()]
        for arm, seeds in groups:
            if arm.folder not in seen:
                seen.add(arm.folder)
                out.append((arm, seeds))
        return out


def run_study(tier: Tier, train: bool = True) -> Study:
    """Train (or, with ``train`` False, collect) the tier's runs in the three phases of the
    module docstring; print gate (a) once the teachers and baselines exist."""
    names = tier.arms
    common = tuple(tier_options(tier))
    teacher_names = _unique(ARMS[n].teacher for n in names)
    baseline_names = _unique(ARMS[n].baseline for n in names)
    specs = [
        RunSpec(config_path(t), tier.output, common, (tier.teacher_seed,)) for t in teacher_names
    ]
    specs += [RunSpec(config_path(b), tier.output, common, tier.seeds) for b in baseline_names]
    first = run_specs(specs, tier, train)
    teachers = dict(zip(teacher_names, first[: len(teacher_names)]))
    baselines = dict(zip(baseline_names, first[len(teacher_names) :]))
    study = Study(tier, teachers, baselines, {})
    if train:
        lines = [gate_a_line(study, n, gate_a(study, n)) for n in names if ARMS[n].share]
        print("\n".join(["", "gate (a), before the students:", *lines, ""]), flush=True)

    specs = [
        RunSpec(config_path(n), tier.output, tuple(arm_options(n, tier, teachers)), tier.seeds)
        for n in names
    ]
    study.arms = dict(zip(names, run_specs(specs, tier, train)))
    if tier.gpu:
        _compute_matched(study, train)
    return study


def _compute_matched(study: Study, train: bool):
    """Phase 3: the compute-matched baseline of every arm."""
    tier, common = study.tier, tier_options(study.tier)
    folder = os.path.join(tier.output, "compute_matched")
    specs, labels = {}, {}
    for name, arm in study.arms.items():
        base = study.baseline_of(name)
        ratio = study.ratios[name] = s_iter_ratio(arm, base)
        if not math.isfinite(ratio):
            continue
        opts, max_iter = compute_matched_options(base.config, common, ratio)
        if opts is None:
            study.matched[name] = base
            continue
        specs[name] = RunSpec(base.config, folder, tuple(opts), tier.seeds)
        labels[name] = f"{base.name}@{max_iter}it"
    for name, arm in zip(specs, run_specs(list(specs.values()), tier, train)):
        # the compute-matched runs of one config sit side by side under their keys by design
        arm.notes[:] = [n for n in arm.notes if "results exist under other keys" not in n]
        study.matched[name] = dataclasses.replace(arm, name=labels[name])


# --------------------------------------------------------------------------------------------
# Test evaluation (--final)
# --------------------------------------------------------------------------------------------
def test_eval_command(run: str, dataset: str = TEST) -> List[str]:
    """train_net.py --eval-only of a finished run's model_final.pth on ``dataset``, written to
    RUN/test_eval."""
    return [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        os.path.join(run, "config.yaml"),
        "--eval-only",
        "MODEL.WEIGHTS",
        os.path.join(run, "model_final.pth"),
        "DATASETS.TEST",
        f'("{dataset}",)',
        "OUTPUT_DIR",
        os.path.join(run, "test_eval"),
    ]


def run_command(cmd: Sequence[str], log_path: str, env: Mapping[str, str]) -> int:
    """Run ``cmd`` from the repository root with ``env`` over this process's environment,
    stdout and stderr to ``log_path``; return its exit status."""
    with open(log_path, "w") as log:
        return subprocess.call(
            list(cmd), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **env)
        )


_HEADER = re.compile(
    r"Evaluation results (?:for (?P<student>\S+)|of the TEACHER on (?P<teacher>\S+)) in csv format"
)
_COPYPASTE = re.compile(r"copypaste: (.*?)\s*$")


def parse_eval_log(text: str, dataset: str = TEST) -> Dict[str, float]:
    """The results an evaluation printed for ``dataset`` (detectron2's "copypaste" lines),
    flattened as metrics.json holds them: ``bbox/AP``, ..., and ``teacher/<dataset>/bbox/AP``,
    ... for a teacher evaluated with the student (TEACHER.EVAL). Later blocks win."""
    results: Dict[str, float] = {}
    prefix = task = names = None
    for line in text.splitlines():
        header = _HEADER.search(line)
        if header:
            prefix = None
            if header.group("student") == dataset:
                prefix = ""
            elif header.group("teacher") == dataset:
                prefix = f"teacher/{dataset}/"
            task = names = None
            continue
        match = _COPYPASTE.search(line)
        if prefix is None or not match:
            continue
        body = match.group(1)
        if body.startswith("Task: "):
            task, names = body[len("Task: ") :], None
        elif task is not None and names is None:
            names = body.split(",")
        elif task is not None:
            for metric, value in zip(names, body.split(",")):
                results[f"{prefix}{task}/{metric}"] = float(value)
            names = None
    return results


def evaluate_on_test(run: str, env: Mapping[str, str], dataset: str = TEST) -> Dict[str, float]:
    """The results of ``run``'s model_final.pth on ``dataset``: read from
    RUN/test_eval/results.json when done before, else evaluated once with
    :func:`test_eval_command` and saved there."""
    folder = os.path.join(run, "test_eval")
    done = os.path.join(folder, "results.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    os.makedirs(folder, exist_ok=True)
    print(f"[{TAG}] {_relative(run)} on {dataset}", flush=True)
    stdout = folder + ".stdout.txt"
    if run_command(test_eval_command(run, dataset), stdout, env) != 0:
        raise SystemExit(f"[{TAG}] the evaluation of {run} on {dataset} failed; see {stdout}")
    log = os.path.join(folder, "log.txt")
    text = ""
    if os.path.exists(log):
        with open(log) as f:
            text = f.read()
    results = parse_eval_log(text, dataset)
    if PRIMARY not in results:
        raise SystemExit(f"[{TAG}] no {dataset} results for {run} in {log}; see {stdout}")
    tmp = f"{done}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(tmp, done)
    return results


def on_test(study: Study) -> Study:
    """The study with every record replaced by its run's results on the test split
    (:func:`evaluate_on_test`, ``tier.jobs`` at a time); s/iter kept."""
    runs = [(arm, seed) for arm, seeds in study.all_runs() for seed in seeds]
    results = _pool(
        [lambda a=a, s=s: evaluate_on_test(a.run_dir(s), study.tier.env) for a, s in runs],
        study.tier.jobs,
    )
    by_run = {a.run_dir(s): r for (a, s), r in zip(runs, results)}
    swapped: Dict[int, Arm] = {}

    def swap(arm: Arm) -> Arm:
        if id(arm) not in swapped:  # an arm met twice stays one object
            records = {s: by_run[arm.run_dir(s)] for s in arm.records}
            swapped[id(arm)] = dataclasses.replace(arm, records=records, s_iter=dict(arm.s_iter))
        return swapped[id(arm)]

    return dataclasses.replace(
        study,
        teachers={k: swap(a) for k, a in study.teachers.items()},
        baselines={k: swap(a) for k, a in study.baselines.items()},
        arms={k: swap(a) for k, a in study.arms.items()},
        matched={k: swap(a) for k, a in study.matched.items()},
        dataset=TEST,
    )


# --------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------
def _values(arm: Arm, metric: str = PRIMARY) -> Dict[int, float]:
    return {s: float(r[metric]) for s, r in arm.records.items()}


def gate_a(study: Study, name: str) -> GateResult:
    """Gate (a) of arm ``name``: its teacher's AP against its family baseline's per-seed APs,
    with the arm's expected share of the gap."""
    method = ARMS[name]
    teacher = study.teachers[method.teacher]
    teacher_ap = teacher.records[study.tier.teacher_seed][PRIMARY]
    base = study.baselines[method.baseline]
    return gap_gate(teacher_ap, [_values(base)[s] for s in sorted(base.records)], method.share)


def gate_a_line(study: Study, name: str, gate: GateResult) -> str:
    """One printed line of gate (a)."""
    method = ARMS[name]
    n = gate.numbers
    uses = "" if method.loads_teacher else " (the arm trains without it)"
    return (
        f"{name} ({method.method}): teacher {method.teacher}{uses} AP {n['teacher']:.1f}, "
        f"{method.baseline} AP {n['student_mean']:.1f}, share {method.share:g}: "
        f"{gate.status}: {'; '.join(gate.reasons)}"
    )


def _ap(value) -> float:
    """An AP of an evaluation record; NaN (detectron2's value for a model without a single
    detection) counts as 0, as in :func:`seed_runs.final_record`."""
    value = float(value)
    return 0.0 if math.isnan(value) else value


def _teacher_ap(record: Mapping) -> Optional[float]:
    for key, value in record.items():
        if key.startswith("teacher/") and key.endswith("/bbox/AP"):
            return _ap(value)
    return None


def gate_b(study: Study, name: str) -> Tuple[GateResult, List[str]]:
    """Gate (b) of the LGD arm ``name``: the implicit teacher's AP against the student's after
    SCHEDULE.START_ITER iterations (from the run's metrics.json, dev split), paired over the
    seeds; passes when the teacher clearly beats the student there (verdict "gain shown").
    Returns the gate and one line per seed (start and end; with --final also the test split's
    final evaluation)."""
    arm = study.arms[name]
    cfg = resolve(arm.config, arm.opts)
    start, max_iter = cfg.MODEL.DISTILL.SCHEDULE.START_ITER, cfg.SOLVER.MAX_ITER
    gate_name = "gate (b) implicit teacher vs student at the start of distillation"
    teacher_at, student_at, lines = {}, {}, []
    for seed in sorted(arm.records):
        evaluations = [r for r in read_metrics(arm.run_dir(seed)) if PRIMARY in r]
        parts = []
        for rec in evaluations:
            done = min(int(rec.get("iteration", max_iter)) + 1, max_iter)
            t_ap = _teacher_ap(rec)
            if t_ap is None:
                continue
            if done == start:
                teacher_at[seed], student_at[seed] = t_ap, _ap(rec[PRIMARY])
            parts.append(f"after {done} it teacher {t_ap:.1f} vs student {_ap(rec[PRIMARY]):.1f}")
        if study.dataset != DEV:
            t_ap = _teacher_ap(arm.records[seed])
            if t_ap is not None:
                parts.append(
                    f"final on {study.dataset}: teacher {t_ap:.1f} vs student "
                    f"{arm.records[seed][PRIMARY]:.1f}"
                )
        lines.append(f"{name}, seed {seed}: " + ("; ".join(parts) or "no teacher evaluation"))
    numbers = {"start_iter": start, "teacher": teacher_at, "student": student_at}
    if not teacher_at or set(teacher_at) != set(arm.records):
        reason = (
            f"no evaluation of the teacher after START_ITER {start} iterations for every seed "
            f"(TEST.EVAL_PERIOD {start} evaluates there)"
        )
        return GateResult(gate_name, None, numbers, [reason]), lines
    c = paired_comparison(student_at, teacher_at)
    ci = "" if c.ci is None else f" [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}]"
    clearly = c.verdict == GAIN
    reason = (
        f"after START_ITER {start} iterations: teacher {seed_runs.fmt(list(c.arm))} vs student "
        f"{seed_runs.fmt(list(c.baseline))}, teacher − student {c.mean_delta:+.2f}{ci} "
        f"({c.verdict}): the teacher "
        + ("clearly beats the student there" if clearly else "does not clearly beat the student")
        + " (START_ITER is the config's; this study does not move it)"
    )
    passed = None if c.ci is None else clearly
    return GateResult(gate_name, passed, numbers, [reason]), lines


def gate_c(study: Study, name: str) -> Dict[int, GateResult]:
    """Gate (c) of arm ``name`` for each seed against the same seed of its family baseline."""
    arm, base = study.arms[name], study.baseline_of(name)
    return {
        seed: collapse_gate_for_runs(
            arm.run_dir(seed), base.run_dir(seed), iteration=study.tier.gate_iteration
        )
        for seed in sorted(arm.records)
    }


def _c_summary(results: Mapping[int, GateResult]) -> str:
    """ "fail (seed 2), pass (seeds 1, 3)": failures first."""
    by_status: Dict[str, List[int]] = {"fail": [], "cannot be checked": [], "pass": []}
    for seed, gate in sorted(results.items()):
        by_status[gate.status].append(seed)
    return ", ".join(
        f"{status} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
        for status, seeds in by_status.items()
        if seeds
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _check_seeds(study: Study):
    """Refuse a study whose arms do not all hold exactly the tier's seeds."""
    expected = sorted(study.tier.seeds)
    groups = list(study.baselines.values()) + list(study.arms.values())
    groups += list(study.matched.values())
    wrong = [
        f"{a.name} (seeds {sorted(a.records)})" for a in groups if sorted(a.records) != expected
    ]
    if wrong:
        raise SystemExit(
            f"[{TAG}] every arm must hold the same seeds {expected} for the paired comparisons; "
            f"these differ: {'; '.join(wrong)}"
        )


def _comparisons(study: Study) -> List[Tuple[str, str, Arm]]:
    """(arm name, role, baseline arm) for every comparison of the study."""
    out = []
    for name in study.arms:
        method = ARMS[name]
        out.append((name, "baseline", study.baselines[method.baseline]))
        for other in method.also_against:
            out.append((name, "control", study.arms[other]))
        matched = study.matched.get(name)
        if matched is not None and matched is not study.baseline_of(name):
            out.append((name, "compute-matched", matched))
    return out


_PLAIN = re.compile(r"[\w@%+=:,./<>-]+")


def _command(study: Study, arm: Arm) -> str:
    """The command that reproduces one seed of ``arm`` (its evaluation, with --final)."""
    run = _relative(arm.folder)
    if study.dataset == TEST:
        cmd = test_eval_command(os.path.join(run, "seed<k>"))
        cmd = ["python", _relative(cmd[1])] + cmd[2:]
    else:
        opts = [_relative(o) if os.path.isabs(o) else o for o in arm.opts]
        cmd = ["python", "train_net.py", "--config-file", _relative(arm.config), *opts]
        cmd += ["SEED", "<k>", "OUTPUT_DIR", os.path.join(run, "seed<k>")]
    # quoted for a shell, the <k> placeholders left readable
    return "`" + " ".join(c if _PLAIN.fullmatch(c) else shlex.quote(c) for c in cmd) + "`"


def _delta(c) -> str:
    ci = "–" if c.ci is None else f"[{c.ci[0]:+.2f}, {c.ci[1]:+.2f}]"
    return f"{c.mean_delta:+.2f} {ci}"


def report(study: Study, gate_study: Optional[Study] = None) -> str:
    """The markdown report: verdict table, gates, per-run tables, paired comparisons.

    Args:
        gate_study: the study whose records decide gate (a) (with --final: the dev study, so
            the gate stays the one decided before the students ran; the test split's own
            gate (a) is printed beside it for information). Default: ``study``.
    """
    _check_seeds(study)
    tier = study.tier
    gate_study = study if gate_study is None else gate_study
    gates_a = {n: gate_a(gate_study, n) for n in study.arms if ARMS[n].share}
    gates_b = {n: gate_b(study, n) for n in study.arms if ARMS[n].gate_b}
    gates_c = {n: gate_c(study, n) for n in study.arms if ARMS[n].distills}

    rows = []
    for name, role, base in _comparisons(study):
        method, arm = ARMS[name], study.arms[name]
        c = paired_comparison(_values(base), _values(arm))
        verdict = c.verdict
        marks = []
        if name in gates_a:
            marks.append(f"a {gates_a[name].status}")
            if gates_a[name].passed is False:
                verdict = f"not testable here (gate a); computed: {c.verdict}"
        if name in gates_b:
            marks.append(f"b {gates_b[name][0].status}")
        if name in gates_c:
            marks.append(f"c {_c_summary(gates_c[name])}")
        if method.teacher:
            t_ap = study.teachers[method.teacher].records[tier.teacher_seed][PRIMARY]
            teacher = f"{t_ap:.1f}" + ("" if method.loads_teacher else " (gap only)")
        elif method.gate_b:
            implicit = [_teacher_ap(arm.records[s]) for s in sorted(arm.records)]
            implicit = [v for v in implicit if v is not None]
            teacher = f"implicit {seed_runs.fmt(implicit)}" if implicit else "–"
        else:
            teacher = "–"
        label = base.name + ("" if role == "baseline" else f" ({role})")
        rows.append(
            f"| {name} | {method.method} | {label} | {teacher} "
            f"| {seed_runs.fmt(list(c.arm))} | {seed_runs.fmt(list(c.baseline))} | {_delta(c)} "
            f"| {verdict} | {'; '.join(marks) or '–'} | {_command(study, arm)} |"
        )
    verdicts = "\n".join(
        [
            "| arm | method | baseline | teacher AP | student AP | baseline AP | Δ AP [95 % CI] "
            "| verdict | gates | command (k = each seed) |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )

    rule = "expected share of the teacher-student gap > 2 × baseline seed std"
    if gate_study is study:
        gate_lines = [f"gate (a): {rule}"]
    else:
        gate_lines = [f"gate (a), decided on {gate_study.dataset} (the verdicts use it): {rule}"]
    gate_lines += [gate_a_line(gate_study, n, g) for n, g in gates_a.items()]
    if gate_study is not study and gates_a:
        gate_lines += ["", f"gate (a) recomputed on {study.dataset}, for information only:"]
        gate_lines += [gate_a_line(study, n, gate_a(study, n)) for n in gates_a]
    for name, (gate, lines) in gates_b.items():
        gate_lines += ["", f"{gate.name}: {gate.status}: {'; '.join(gate.reasons)}", *lines]
    gate_lines += [
        "",
        f"gate (c): distillation losses and grad_norm at iteration {tier.gate_iteration}, "
        "against the same seed of the family baseline",
    ]
    for name, results in gates_c.items():
        base = study.baseline_of(name).name
        for seed, gate in results.items():
            gate_lines.append(
                f"{name} vs {base}, seed {seed}: {gate.status}: {'; '.join(gate.reasons)}"
            )

    teacher_folders = {a.folder for a in study.teachers.values()}
    students = [a for a, _ in study.all_runs() if a.folder not in teacher_folders]
    details = []
    for name, role, base in _comparisons(study):
        table, lines = seed_runs.comparison_table(
            [base, study.arms[name]],
            {study.arms[name].config: base.config},
            primary="AP",
            metrics=("AP50",),
        )
        details.append((table.splitlines(), lines))
    header = details[0][0][:2] if details else []
    detail_table = "\n".join(header + [r for t, _ in details for r in t[2:]])
    detail_verdicts = [line for _, lines in details for line in lines]

    parts = [
        f"# Proving ground, {tier.name} tier, on {study.dataset}",
        f"command: `{tier.command}`\n\nseeds {', '.join(map(str, tier.seeds))} (teachers: seed "
        f"{tier.teacher_seed}); jobs {tier.jobs}, threads {tier.threads} per run; primary "
        f"metric AP (AP50 beside it); runs under {_relative(tier.output)}",
        f"## Verdicts\n\n{verdicts}",
        f'{seed_runs.VERDICT_RULE}. A failed gate (a) makes the verdict "not testable here (gate '
        'a)", the computed verdict beside it.',
    ]
    if study.matched or study.ratios:
        lines = []
        for name, ratio in study.ratios.items():
            matched = study.matched.get(name)
            if matched is None:
                lines.append(f"{name}: s/iter unknown, no compute-matched baseline")
            elif matched is study.baseline_of(name):
                lines.append(f"{name}: s/iter ratio {ratio:.2f}: the baseline itself")
            else:
                lines.append(f"{name}: s/iter ratio {ratio:.2f}: {matched.name}")
        parts.append(
            "compute-matched baselines (arm s/iter over its baseline's):\n" + "\n".join(lines)
        )
    parts += [
        "## Gates\n\n" + "\n".join(gate_lines),
        "## Runs\n\nteachers\n\n" + seed_runs.summary_table(list(study.teachers.values()), "AP"),
        "students\n\n" + seed_runs.summary_table(students, "AP"),
        "## Paired comparisons\n\n" + detail_table,
        "\n".join(detail_verdicts),
    ]
    notes = []
    for arm, _ in study.all_runs():
        notes += [n for n in arm.notes if n not in notes]
    if notes:
        parts.append("\n".join(f"note: {n}" for n in notes))
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def parse_args(argv=None) -> Tuple[Tier, bool]:
    """(the tier asked for, --final)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tier", required=True, choices=["cpu", "gpu"])
    p.add_argument("--seeds", nargs="+", type=int, help="cpu: 1 2 3; gpu: 1 2 3 4; --tiny: 1 2")
    p.add_argument("--teacher-seed", type=int, default=1)
    p.add_argument("--jobs", type=int, help="runs at a time (cpu: 2, gpu: 16, --tiny: 2)")
    p.add_argument("--threads", type=int, default=1, help="OMP / MKL threads of each run")
    p.add_argument(
        "--output",
        default=os.path.join(ROOT, "output", "ProvingGround"),
        help="runs go to OUTPUT/<tier> (default output/ProvingGround)",
    )
    p.add_argument("--final", action="store_true", help="evaluate the finished runs on test")
    p.add_argument("--tiny", action="store_true", help="the GPU tier with 4-iteration runs")
    args = p.parse_args(argv)
    if args.tiny and args.tier != "gpu":
        p.error("--tiny tests the GPU tier's plumbing: use it with --tier gpu")
    name = "tiny" if args.tiny else args.tier
    seeds, jobs = DEFAULTS[name]
    seeds = tuple(args.seeds) if args.seeds else seeds
    if len(set(seeds)) != len(seeds):
        p.error(f"--seeds must be distinct, got {list(seeds)}")
    if args.threads < 1 or (args.jobs is not None and args.jobs < 1):
        p.error("--jobs and --threads must be at least 1")
    jobs = args.jobs or jobs
    command = f"python tools/proving_ground.py --tier {args.tier}" + (" --tiny" * args.tiny)
    command += f" --seeds {' '.join(map(str, seeds))} --teacher-seed {args.teacher_seed}"
    command += f" --jobs {jobs} --threads {args.threads} --output {_relative(args.output)}"
    command += " --final" * args.final
    output = os.path.join(os.path.abspath(args.output), name)
    return Tier(name, seeds, args.teacher_seed, output, jobs, args.threads, command), args.final


def main(argv=None) -> str:
    """Run the study of the command line; print the report and write it to the tier's
    summary.md (summary_test.md with --final). Returns the report."""
    tier, final = parse_args(argv)
    if tier.name == "gpu" and not final:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                f"[{TAG}] --tier gpu needs CUDA (its runs are keyed with MODEL.DEVICE cuda); "
                "--tier gpu --tiny tests its plumbing on a CPU"
            )
    os.makedirs(tier.output, exist_ok=True)
    dev = run_study(tier, train=not final)
    study = on_test(dev) if final else dev
    text = report(study, gate_study=dev)
    print(text, flush=True)
    with open(os.path.join(tier.output, "summary_test.md" if final else "summary.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    main()
