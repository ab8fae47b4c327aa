"""Train configs over several seeds with train_net.py and compare them: the engine behind the
projects' DeepForest seed studies.

Run keys. Every run lives in ``OUTPUT/<config name>/<key>/seed<k>``, where ``key`` (12 hex
digits, :func:`run_key`) is a sha256 over what decides the run besides its seed:

* the config as train_net.py resolves it (``lgdkd.engine.load_config`` of the file with the
  same options), dumped, without OUTPUT_DIR and SEED;
* the sha256 of every weights file it names that exists (MODEL.WEIGHTS,
  MODEL.DISTILL.STUDENT_INIT_WEIGHTS, MODEL.DISTILL.TEACHER.WEIGHTS);
* for a teacher config (MODEL.DISTILL.TEACHER.CONFIG_FILE): the sha256 of the file, its
  resolved config (with TEACHER.OPTS) and, recursively, the same for its own weights files and
  teacher config.

Paths inside the repository are written relative to it, so a moved checkout keeps its keys.
A finished run (final checkpoint and evaluation) under the right key is reused, so a study can
be stopped and started again; runs under other keys, and runs of the older unkeyed layout
``OUTPUT/<config name>/seed<k>``, are never reused nor deleted: a note names them. Each key
folder holds ``key.json``, the inputs the key was computed from. A teacher trained here is
keyed the same way, and its students name its weights file, whose sha256 enters their key:
retraining the teacher (or changing its config) gives new student keys.

Tables. Per config: its key, seeds, mean ± sample std of AP / AP50 / AP75, the primary metric
per seed and s/iter. Per arm against its baseline (same seeds), for the primary metric
(AP50 by default: DeepForest's) and AP: the per-seed values, mean ± std, the paired
difference with its 95 % Student-t interval, Welch's p, the pooled seed std and the verdict of
``lgdkd.evaluation.stats``; the paired bootstrap of the primary metric over the evaluation
images and the seed pairs (``lgdkd.evaluation.bootstrap``, from each run's
``inference/<set>/coco_instances_results.json`` and ``ground_truth.json``), which adds the
scene-sampling noise of a small validation set to the seed noise; and gate (c) of
``lgdkd.evaluation.gates`` (distillation loss and gradient norm at iteration 10) for every arm
that logs distillation losses.
"""

import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)

from lgdkd.evaluation.bootstrap import metric_matches, paired_bootstrap  # noqa: E402
from lgdkd.evaluation.gates import collapse_gate_for_runs  # noqa: E402
from lgdkd.evaluation.stats import paired_comparison  # noqa: E402

METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75")
COMPARED = ("bbox/AP50", "bbox/AP")
PRIMARY = "bbox/AP50"
WEIGHT_KEYS = (
    "MODEL.WEIGHTS",
    "MODEL.DISTILL.STUDENT_INIT_WEIGHTS",
    "MODEL.DISTILL.TEACHER.WEIGHTS",
)
_KEY = re.compile(r"^[0-9a-f]{12}$")
_SEED = re.compile(r"^seed(\d+)$")

__all__ = [
    "Arm",
    "add_primary_arg",
    "add_teacher_args",
    "choose_teacher",
    "comparison_table",
    "final_record",
    "fmt",
    "gate_lines",
    "key_inputs",
    "metric_name",
    "other_results",
    "prepare_arm",
    "run_comparison",
    "run_key",
    "seed_table",
    "study_report",
    "summary_table",
    "train",
    "train_arms",
    "train_teacher",
]


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------
def final_record(out_dir: str):
    """(last evaluation record, mean s/iter) of a finished run, or (None, None).

    A model without a single detection is reported by detectron2 with every AP NaN ("No
    predictions from the model!"); by COCO's definition (every ground-truth box missed) its AP
    is 0, so such a record gets 0.0 for each NaN ``bbox/`` metric and ``"no_detections":
    True``."""
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(out_dir, "model_final.pth")):
        return None, None
    ap, times = None, []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "bbox/AP" in rec:
                ap = rec
            if "time" in rec:
                times.append(rec["time"])
    if ap is not None and all(
        isinstance(v, float) and math.isnan(v) for k, v in ap.items() if k.startswith("bbox/")
    ):
        ap = {k: (0.0 if k.startswith("bbox/") else v) for k, v in ap.items()}
        ap["no_detections"] = True
    return ap, (statistics.mean(times) if times else float("nan"))


def train(
    config: str,
    seed: int,
    out_dir: str,
    opts: Sequence[str] = (),
    tag: str = "seeds",
    env: Optional[Mapping[str, str]] = None,
):
    """train_net.py --config-file config SEED seed OUTPUT_DIR out_dir *opts (stdout to
    out_dir.stdout.txt), with ``env`` (e.g. OMP_NUM_THREADS) set over this process's
    environment; exits with a message naming the log when the run fails."""
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config]
    cmd += ["SEED", str(seed), "OUTPUT_DIR", out_dir, *map(str, opts)]
    print(f"[{tag}] {os.path.basename(config)} seed {seed} -> {out_dir}", flush=True)
    t0 = time.time()
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    with open(out_dir + ".stdout.txt", "w") as log:
        environment = dict(os.environ, **env) if env else None
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment)
    if rc != 0:
        raise SystemExit(f"[{tag}] {config} seed {seed} failed; see {out_dir}.stdout.txt")
    print(f"[{tag}]   done in {time.time() - t0:.0f} s", flush=True)


# --------------------------------------------------------------------------------------------
# Run keys
# --------------------------------------------------------------------------------------------
def _in_root(path: str) -> str:
    """A path as train_net.py (run from the repository root) reads it."""
    return path if os.path.isabs(path) else os.path.join(ROOT, path)


def _portable(value):
    """``value`` with absolute paths inside the repository made relative to it."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        norm = os.path.normpath(value)
        if norm.startswith(ROOT + os.sep):
            return os.path.relpath(norm, ROOT)
    return value


def _dump(cfg) -> dict:
    """A config as plain data (what ``cfg.dump()`` writes), without OUTPUT_DIR and SEED."""
    import yaml

    data = yaml.safe_load(cfg.dump())
    data.pop("OUTPUT_DIR", None)
    data.pop("SEED", None)
    return _portable(data)


def _lookup(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _sha256_text(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _file_inputs(cfg, seen: Tuple[str, ...]) -> dict:
    """The sha256 of each weights file ``cfg`` names (None: not a file here) and its teacher
    config's content, resolved config and own files (recursively)."""
    from lgdkd.checkpoint import file_fingerprint
    from lgdkd.config import get_cfg

    files = {}
    for name in WEIGHT_KEYS:
        path = _lookup(cfg, name)
        if path:
            full = _in_root(path)
            files[name] = file_fingerprint(full)["sha256"] if os.path.isfile(full) else None
    teacher = cfg.MODEL.DISTILL.TEACHER
    if teacher.CONFIG_FILE:
        full = os.path.normpath(os.path.abspath(_in_root(teacher.CONFIG_FILE)))
        entry = {"sha256": None}
        if os.path.isfile(full):
            entry["sha256"] = _sha256_text(full)
            if full not in seen:  # a config that names itself is hashed once
                tcfg = get_cfg()
                tcfg.merge_from_file(full)
                tcfg.merge_from_list(list(teacher.OPTS))
                entry["config"] = _dump(tcfg)
                entry["files"] = _file_inputs(tcfg, seen + (full,))
        files["MODEL.DISTILL.TEACHER.CONFIG_FILE"] = entry
    return files


def key_inputs(config: str, opts: Sequence[str] = ()) -> dict:
    """What the run key of ``config`` with ``opts`` is computed from: ``{"config": the resolved
    config without OUTPUT_DIR and SEED, "files": sha256 of its weights files and teacher
    config (see the module docstring)}``."""
    from lgdkd.engine.defaults import load_config

    cfg = load_config(SimpleNamespace(config_file=config, opts=[str(o) for o in opts]))
    seen = (os.path.normpath(os.path.abspath(config)),)
    return {"config": _dump(cfg), "files": _file_inputs(cfg, seen)}


def run_key(config: str, opts: Sequence[str] = ()) -> str:
    """The first 12 hex digits of the sha256 of :func:`key_inputs` (canonical JSON)."""
    return _digest(key_inputs(config, opts))


def _digest(inputs: dict) -> str:
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _finished_seeds(folder: str) -> List[int]:
    if not os.path.isdir(folder):
        return []
    seeds = []
    for entry in os.listdir(folder):
        match = _SEED.match(entry)
        if match and final_record(os.path.join(folder, entry))[0] is not None:
            seeds.append(int(match.group(1)))
    return sorted(seeds)


def other_results(config_dir: str, key: str) -> Tuple[Dict[str, List[int]], List[int]]:
    """Finished runs in ``config_dir`` (OUTPUT/<config name>) that a study under ``key`` does
    not use: ``({other key: its finished seeds}, finished seeds of the unkeyed layout)``."""
    others = {}
    if os.path.isdir(config_dir):
        for entry in sorted(os.listdir(config_dir)):
            if _KEY.match(entry) and entry != key:
                seeds = _finished_seeds(os.path.join(config_dir, entry))
                if seeds:
                    others[entry] = seeds
    return others, _finished_seeds(config_dir)


# --------------------------------------------------------------------------------------------
# Arms
# --------------------------------------------------------------------------------------------
@dataclass
class Arm:
    """A config of a study with its options, key and results.

    Attributes:
        config: the config file.
        name: its file name without extension.
        opts: the options it trains with (besides SEED and OUTPUT_DIR).
        key: its run key.
        folder: OUTPUT/<name>/<key>, holding key.json and one seed<k> folder per seed.
        notes: lines about results it does not reuse.
        records: ``{seed: last evaluation record}`` of its finished runs.
        s_iter: ``{seed: mean s/iter}`` of its finished runs.
    """

    config: str
    name: str
    opts: List[str]
    key: str
    folder: str
    notes: List[str] = field(default_factory=list)
    records: Dict[int, dict] = field(default_factory=dict)
    s_iter: Dict[int, float] = field(default_factory=dict)

    def run_dir(self, seed: int) -> str:
        """The folder of the run with ``seed``."""
        return os.path.join(self.folder, f"seed{seed}")


def _seeds_text(seeds) -> str:
    return ", ".join(map(str, seeds))


def prepare_arm(config: str, output: str, opts: Sequence[str] = (), tag: str = "seeds") -> Arm:
    """The :class:`Arm` of ``config`` under ``output``: its key computed, ``key.json`` written,
    and a printed note for each set of results it will not reuse."""
    name = os.path.splitext(os.path.basename(config))[0]
    inputs = key_inputs(config, opts)
    key = _digest(inputs)
    config_dir = os.path.join(output, name)
    arm = Arm(config, name, [str(o) for o in opts], key, os.path.join(config_dir, key))
    os.makedirs(arm.folder, exist_ok=True)
    record = {"key": key, "config": config, "opts": arm.opts, "inputs": inputs}
    tmp = os.path.join(arm.folder, f".key.json.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(arm.folder, "key.json"))
    others, legacy = other_results(config_dir, key)
    if others:
        listed = "; ".join(f"{k} (seeds {_seeds_text(s)})" for k, s in others.items())
        arm.notes.append(
            f"{name}: older results exist under other keys, not used (their config or weights "
            f"differ from key {key}'s): {listed}"
        )
    if legacy:
        arm.notes.append(
            f"{name}: runs of the unkeyed layout in {config_dir} (seeds {_seeds_text(legacy)}; "
            "their inputs are unknown) are not reused"
        )
    for note in arm.notes:
        print(f"[{tag}] note: {note}", flush=True)
    return arm


def train_arms(
    configs: Sequence[str],
    seeds: Sequence[int],
    output: str,
    opts: Optional[Mapping[str, Sequence[str]]] = None,
    tag: str = "seeds",
    jobs: int = 1,
    threads: Optional[int] = None,
) -> List[Arm]:
    """Key every config, train every (config, seed) without a finished run under its key,
    ``jobs`` runs at a time (seed by seed, so that a study stopped early holds complete
    pairs), each with ``threads`` OMP / MKL threads when given, and return the arms with
    their results."""
    arms = [prepare_arm(c, output, (opts or {}).get(c, ()), tag) for c in configs]
    pending = [(a, s) for s in seeds for a in arms if final_record(a.run_dir(s))[0] is None]
    extra = {}
    if threads:
        extra["env"] = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if jobs <= 1:
        for a, s in pending:
            train(a.config, s, a.run_dir(s), a.opts, tag, **extra)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            futures = [
                pool.submit(train, a.config, s, a.run_dir(s), a.opts, tag, **extra)
                for a, s in pending
            ]
            for f in futures:
                f.result()
    for arm in arms:
        for seed in seeds:
            collect_result(arm, seed, tag)
    return arms


def collect_result(arm: Arm, seed: int, tag: str = "seeds") -> dict:
    """Read the finished run of ``arm`` with ``seed`` into ``arm.records`` / ``arm.s_iter``
    (with a note when it made no detection); stop with its log's path when it did not finish."""
    rec, s_iter = final_record(arm.run_dir(seed))
    if rec is None:
        raise SystemExit(
            f"[{tag}] {arm.run_dir(seed)} has no final checkpoint and evaluation "
            f"(model_final.pth, bbox/AP in metrics.json); see its log {arm.run_dir(seed)}"
            ".stdout.txt"
        )
    arm.records[seed] = rec
    arm.s_iter[seed] = s_iter
    if rec.get("no_detections"):
        note = (
            f"{arm.name} seed {seed}: no detections at the final evaluation (detectron2 "
            "reports NaN AP); counted as AP 0"
        )
        if note not in arm.notes:
            arm.notes.append(note)
    return rec


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def metric_name(metric: str) -> str:
    """ "AP50" -> "bbox/AP50" (a name with a "/" is kept)."""
    return metric if "/" in metric else f"bbox/{metric}"


def fmt(values: List[float]) -> str:
    """ "mean ± sample std" (one decimal), or the value alone."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _short(metric: str) -> str:
    return metric.split("/")[-1]


def summary_table(arms: Sequence[Arm], primary: str = PRIMARY) -> str:
    """One row per arm: key, seeds, AP / AP50 / AP75 (mean ± sample std), the primary metric
    per seed, mean s/iter."""
    primary = metric_name(primary)
    rows = []
    for arm in arms:
        seeds = sorted(arm.records)
        per_seed = " / ".join(f"{arm.records[s][primary]:.1f}" for s in seeds)
        rows.append(
            f"| {arm.name} | {arm.key} | {len(seeds)} | "
            + " | ".join(fmt([arm.records[s][m] for s in seeds]) for m in METRICS)
            + f" | {per_seed} | {statistics.mean(arm.s_iter[s] for s in seeds):.2f} |"
        )
    return "\n".join(
        [
            f"| config | key | seeds | AP | AP50 | AP75 | {_short(primary)} per seed | s/iter |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def _signed(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}f}"


def _p(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def comparison_table(
    arms: Sequence[Arm],
    baselines: Mapping[str, str],
    primary: str = PRIMARY,
    metrics: Sequence[str] = COMPARED,
) -> Tuple[str, List[str]]:
    """The paired comparison of each arm with its baseline (``baselines``: arm config ->
    baseline config) for ``primary`` then the other ``metrics``: a markdown table and one
    verdict line per arm on the primary metric."""
    primary = metric_name(primary)
    compared = [primary] + [metric_name(m) for m in metrics if metric_name(m) != primary]
    by_config = {a.config: a for a in arms}
    rows, verdicts = [], []
    for arm in arms:
        if arm.config not in baselines:
            continue
        base = by_config[baselines[arm.config]]
        for metric in compared:
            c = paired_comparison(
                {s: r[metric] for s, r in base.records.items()},
                {s: r[metric] for s, r in arm.records.items()},
            )
            ci = "–" if c.ci is None else f"[{_signed(c.ci[0])}, {_signed(c.ci[1])}]"
            pooled = "–" if c.pooled_std is None else f"{c.pooled_std:.2f}"
            label = _short(metric) + (" (primary)" if metric == primary else "")
            rows.append(
                f"| {arm.name} vs {base.name} | {label} "
                f"| {' / '.join(f'{v:.1f}' for v in c.arm)} "
                f"| {' / '.join(f'{v:.1f}' for v in c.baseline)} "
                f"| {fmt(list(c.arm))} | {fmt(list(c.baseline))} "
                f"| {' / '.join(_signed(d, 1) for d in c.deltas)} "
                f"| {_signed(c.mean_delta)} {ci} | {_p(c.welch_p)} | {pooled} | {c.verdict} |"
            )
            if metric == primary:
                verdicts.append(
                    f"{arm.name} (key {arm.key}) vs {base.name} (key {base.key}), "
                    f"{_short(primary)}: {c.verdict}"
                )
    table = "\n".join(
        [
            "| arm vs baseline | metric | arm per seed | baseline per seed | arm | baseline "
            "| Δ per seed | mean Δ [95 % CI] | Welch p | pooled std | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    return table, verdicts


def gate_lines(arms: Sequence[Arm], baselines: Mapping[str, str]) -> List[str]:
    """Gate (c) for every seed of every arm that logs ``loss_distill_*`` terms, against the
    same seed of its baseline."""
    by_config = {a.config: a for a in arms}
    lines = []
    for arm in arms:
        if arm.config not in baselines:
            continue
        base = by_config[baselines[arm.config]]
        for seed in sorted(arm.records):
            gate = collapse_gate_for_runs(arm.run_dir(seed), base.run_dir(seed))
            if not gate.numbers.get("distill_losses"):
                continue  # not a distilling arm
            it = gate.numbers.get("iteration")
            at = "" if it in (None, 9) else f" (first logged after iteration {it + 1})"
            reasons = "; ".join(gate.reasons)
            lines.append(f"{arm.name} vs {base.name}, seed {seed}{at}: {gate.status}: {reasons}")
    return lines


def run_matches(run_dir: str, metric: str):
    """The per-image matches of a finished run for ``metric`` (:func:`lgdkd.evaluation.
    bootstrap.metric_matches`), from its first ``inference/<set>/`` folder holding the
    detections and ``ground_truth.json``; None when the run has none (evaluated before the
    trainer recorded its ground truth, or not by COCO evaluation)."""
    inference = os.path.join(run_dir, "inference")
    if not os.path.isdir(inference):
        return None
    for name in sorted(os.listdir(inference)):
        folder = os.path.join(inference, name)
        dets = os.path.join(folder, "coco_instances_results.json")
        record = os.path.join(folder, "ground_truth.json")
        if os.path.isfile(dets) and os.path.isfile(record):
            with open(record) as f:
                gt_file = json.load(f)["json_file"]
            with open(gt_file) as f, open(dets) as g:
                return metric_matches(json.load(f), json.load(g), metric)
    return None


def bootstrap_lines(
    arms: Sequence[Arm], baselines: Mapping[str, str], metric: str, replicates: int = 2000
) -> List[str]:
    """For each arm against its baseline: the paired bootstrap of ``metric`` over the images
    and the seed pairs (:func:`lgdkd.evaluation.bootstrap.paired_bootstrap`, ``replicates``
    draws, fixed generator seed), or why it is not available."""
    by_config = {a.config: a for a in arms}
    cache: Dict[str, object] = {}

    def matches(arm: Arm, seed: int):
        d = arm.run_dir(seed)
        if d not in cache:
            cache[d] = run_matches(d, metric)
        return cache[d]

    lines = []
    for arm in arms:
        if arm.config not in baselines:
            continue
        base = by_config[baselines[arm.config]]
        seeds = sorted(set(arm.records) & set(base.records))
        a = {s: matches(arm, s) for s in seeds}
        b = {s: matches(base, s) for s in seeds}
        missing = [
            f"{x.name} seed {s}" for x, m in ((arm, a), (base, b)) for s in seeds if m[s] is None
        ]
        if missing:
            lines.append(
                f"{arm.name} vs {base.name}: no per-image detections and ground_truth.json in "
                f"{', '.join(missing)}"
            )
            continue
        r = paired_bootstrap(b, a, replicates=replicates)
        lines.append(
            f"{arm.name} vs {base.name}, {_short(metric_name(metric))}: mean Δ "
            f"{_signed(r.mean_delta)} [{_signed(r.ci[0])}, {_signed(r.ci[1])}] over {r.images} "
            f"images and {len(r.seeds)} seed pairs"
        )
    return lines


VERDICT_RULE = (
    "verdict: gain (loss) shown when mean Δ > 2 × pooled std (< −2 ×) and the 95 % CI "
    "(Student t, n − 1 df, paired over seeds) lies above (below) 0; inconclusive when the CI "
    "excludes 0 but |Δ| ≤ 2 × pooled std; otherwise not shown"
)


def seed_table(
    configs: Sequence[str],
    seeds: Sequence[int],
    output: str,
    opts: Optional[Mapping[str, Sequence[str]]] = None,
    tag: str = "seeds",
    jobs: int = 1,
    baselines: Optional[Mapping[str, str]] = None,
    primary: str = PRIMARY,
    threads: Optional[int] = None,
    controls: Optional[Mapping[str, str]] = None,
) -> str:
    """Train every (config, seed) without a finished run under its key, ``jobs`` runs at a
    time with ``threads`` threads each (:func:`train_arms`), and return the markdown report:
    the per-config table with keys, the paired comparison of each arm with its baseline
    (``baselines``: arm config -> baseline config; by default every config against the
    first), the verdicts on ``primary``, gate (c) and the notes on results not reused; then
    the same comparison of arms with their ``controls`` (arm config -> control config), when
    given. Runs sharing a machine slow each other down: s/iter is only comparable between
    tables made with the same ``jobs`` on the same machine."""
    arms = train_arms(configs, seeds, output, opts, tag, jobs, threads)
    text = study_report(arms, baselines, primary)
    if controls:
        table, verdicts = comparison_table(arms, controls, primary)
        parts = [f"against the controls, same seeds\n\n{table}", "\n".join(verdicts)]
        boot = bootstrap_lines(arms, controls, primary)
        if boot:
            parts.append("\n".join(["bootstrap against the controls (as above)", *boot]))
        text += "\n\n" + "\n\n".join(parts)
    return text


def study_report(
    arms: Sequence[Arm], baselines: Optional[Mapping[str, str]] = None, primary: str = PRIMARY
) -> str:
    """The report of :func:`seed_table` for arms already trained."""
    if baselines is None:
        baselines = {a.config: arms[0].config for a in arms[1:]}
    parts = [summary_table(arms, primary)]
    if baselines:
        table, verdicts = comparison_table(arms, baselines, primary)
        parts += [
            f"paired comparison with the baseline, same seeds; primary metric "
            f"{_short(metric_name(primary))}\n\n{table}",
            "\n".join([VERDICT_RULE, *verdicts]),
        ]
        boot = bootstrap_lines(arms, baselines, primary)
        if boot:
            parts.append(
                "\n".join(
                    [
                        "bootstrap over the evaluation images and the seed pairs (both drawn "
                        "with replacement, 2000 replicates; 95 % percentile interval)",
                        *boot,
                    ]
                )
            )
        gates = gate_lines(arms, baselines)
        if gates:
            parts.append(
                "\n".join(["gate (c): distillation losses and grad_norm at iteration 10", *gates])
            )
    notes = [n for a in arms for n in a.notes]
    if notes:
        parts.append("\n".join(f"note: {n}" for n in notes))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# Teacher -> student studies
# --------------------------------------------------------------------------------------------
def add_teacher_args(parser, default: str, alternative: Optional[str] = None):
    """--seeds, --teacher-seed, --teacher-config (``default``; ``alternative``, if any, named in
    the help), --jobs and --primary: the options every teacher -> student comparison script
    shares."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--teacher-seed", type=int, default=1)
    other = f"; another: {os.path.relpath(alternative, ROOT)}" if alternative else ""
    parser.add_argument(
        "--teacher-config",
        default=default,
        help=f"the teacher's recipe (default {os.path.relpath(default, ROOT)}{other})",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (GPU: several fit)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP / MKL threads of each run (default: inherited; with --jobs N on C cores, C/N)",
    )
    parser.add_argument(
        "--choose-teacher",
        action="store_true",
        help="first train every candidate teacher recipe on deepforest_traindev, evaluate it on "
        "deepforest_dev and use the best one (on --primary) as --teacher-config",
    )
    parser.set_defaults(
        teacher_candidates=[default] + ([alternative] if alternative else []),
    )
    add_primary_arg(parser)


def add_primary_arg(parser):
    """--primary: the metric the verdicts are given on (default AP50)."""
    parser.add_argument(
        "--primary",
        default="AP50",
        choices=["AP", "AP50", "AP75"],
        help="metric of the verdicts (default AP50, DeepForest's primary metric)",
    )


DEV_SPLIT_OPTS = (
    "DATASETS.TRAIN",
    "('deepforest_traindev',)",
    "DATASETS.TEST",
    "('deepforest_dev',)",
)


def choose_teacher(args, output: str, tag: str) -> Tuple[str, str]:
    """Train every recipe of ``args.teacher_candidates`` at ``args.teacher_seed`` on
    ``deepforest_traindev`` and evaluate it on ``deepforest_dev`` (runs under
    ``output``/teacher_choice, keyed like any run); return (the recipe with the best
    ``args.primary`` on dev, ties to the first listed; a markdown report of the choice).
    The chosen recipe is then trained on the full training set as the study's teacher: the
    evaluation set of the students never decides which teacher they get."""
    candidates = [os.path.abspath(c) for c in args.teacher_candidates]
    arms = train_arms(
        candidates,
        [args.teacher_seed],
        os.path.join(output, "teacher_choice"),
        {c: DEV_SPLIT_OPTS for c in candidates},
        tag,
        getattr(args, "jobs", 1),
        getattr(args, "threads", None),
    )
    primary = getattr(args, "primary", PRIMARY)
    metric = metric_name(primary)
    best = max(arms, key=lambda a: (a.records[args.teacher_seed][metric], -arms.index(a)))
    scores = ", ".join(f"{a.name} {a.records[args.teacher_seed][metric]:.1f}" for a in arms)
    report = (
        f"teacher chosen on deepforest_dev (trained on deepforest_traindev, seed "
        f"{args.teacher_seed}), {_short(metric)}: {scores}; chosen: {best.name}\n\n"
        f"{summary_table(arms, primary)}"
    )
    return best.config, report


def train_teacher(args, output: str, tag: str):
    """Train (once per key) the teacher of ``args.teacher_config`` at ``args.teacher_seed``;
    return (its markdown table, the config options that make a student distil from it)."""
    teacher = os.path.abspath(args.teacher_config)
    threads = getattr(args, "threads", None)
    (arm,) = train_arms(
        [teacher],
        [args.teacher_seed],
        output,
        tag=tag,
        jobs=1,
        threads=threads and threads * max(1, getattr(args, "jobs", 1)),  # it trains alone
    )
    weights = os.path.join(arm.run_dir(args.teacher_seed), "model_final.pth")
    return study_report([arm], primary=getattr(args, "primary", PRIMARY)), [
        "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        teacher,
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        weights,
    ]


def run_comparison(
    args,
    students: Sequence[str],
    with_teacher: Sequence[str],
    tag: str,
    controls: Optional[Mapping[str, str]] = None,
    baselines: Optional[Mapping[str, str]] = None,
) -> str:
    """The kits' teacher -> student comparison: train the teacher of
    ``args.teacher_config`` (once per key; with ``args.choose_teacher``, the candidate recipe
    that :func:`choose_teacher` picks on the dev split) when a config of ``with_teacher`` is
    among ``students``, then every student config for ``args.seeds`` (those of
    ``with_teacher`` distilling from that teacher) and compare each with the first (the
    baseline), and with its control in ``controls`` (arm config -> control config), on
    ``args.primary``; print the teacher's and the students' reports and write them to
    ``args.output``/summary.md. Returns the text."""
    text = ""
    opts = {}
    primary = getattr(args, "primary", PRIMARY)
    if any(c in with_teacher for c in students):
        if getattr(args, "choose_teacher", False):
            args.teacher_config, choice = choose_teacher(args, args.output, tag)
            text += f"{choice}\n\n"
        teacher_table, teacher_opts = train_teacher(args, args.output, tag)
        text += f"teacher\n\n{teacher_table}\n\n"
        opts = {c: teacher_opts for c in students if c in with_teacher}
    table = seed_table(
        students,
        args.seeds,
        args.output,
        opts,
        tag=tag,
        jobs=args.jobs,
        primary=primary,
        threads=getattr(args, "threads", None),
        controls=controls,
        baselines=baselines,
    )
    text += f"students, seeds {args.seeds}; mean ± sample std\n\n{table}\n"
    print(text)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(text)
    return text
