"""Train configs over several seeds with train_net.py and tabulate mean and spread of the final
AP / AP50 / AP75: the engine behind the projects' DeepForest comparisons.

Runs go to OUTPUT/<config name>/seed<k>; a run with a final checkpoint and evaluation is not
repeated, so a comparison can be stopped and started again.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75")

__all__ = [
    "final_record",
    "train",
    "fmt",
    "seed_table",
    "add_teacher_args",
    "train_teacher",
    "run_comparison",
]


def final_record(out_dir: str):
    """(last evaluation record, mean s/iter) of a finished run, or (None, None)."""
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(out_dir, "model_final.pth")):
        return None, None
    ap, times = None, []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if "bbox/AP" in rec:
                ap = rec
            if "time" in rec:
                times.append(rec["time"])
    return ap, (statistics.mean(times) if times else float("nan"))


def train(config: str, seed: int, out_dir: str, opts: Sequence[str] = (), tag: str = "seeds"):
    """train_net.py --config-file config SEED seed OUTPUT_DIR out_dir *opts (stdout to
    out_dir.stdout.txt); exits with a message naming the log when the run fails."""
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config]
    cmd += ["SEED", str(seed), "OUTPUT_DIR", out_dir, *map(str, opts)]
    print(f"[{tag}] {os.path.basename(config)} seed {seed} -> {out_dir}", flush=True)
    t0 = time.time()
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    with open(out_dir + ".stdout.txt", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"[{tag}] {config} seed {seed} failed; see {out_dir}.stdout.txt")
    print(f"[{tag}]   done in {time.time() - t0:.0f} s", flush=True)


def fmt(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def seed_table(
    configs: Sequence[str],
    seeds: Sequence[int],
    output: str,
    opts: Optional[Dict[str, Sequence[str]]] = None,
    tag: str = "seeds",
    jobs: int = 1,
) -> str:
    """Train every (config, seed) without a finished run, ``jobs`` runs at a time; return the
    markdown table (one row per config: seeds, mean ± sample std of AP / AP50 / AP75, AP per
    seed, mean s/iter). Runs sharing a machine slow each other down: s/iter is only comparable
    between tables made with the same ``jobs`` on the same machine."""

    def out_dir(config, seed):
        return os.path.join(output, os.path.splitext(os.path.basename(config))[0], f"seed{seed}")

    pending = [(c, s) for c in configs for s in seeds if final_record(out_dir(c, s))[0] is None]
    if jobs <= 1:
        for c, s in pending:
            train(c, s, out_dir(c, s), (opts or {}).get(c, ()), tag)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            futures = [
                pool.submit(train, c, s, out_dir(c, s), (opts or {}).get(c, ()), tag)
                for c, s in pending
            ]
            for f in futures:
                f.result()
    rows = []
    for config in configs:
        name = os.path.splitext(os.path.basename(config))[0]
        results, speeds = [], []
        for seed in seeds:
            rec, s_iter = final_record(out_dir(config, seed))
            results.append(rec)
            speeds.append(s_iter)
        per_seed = " / ".join(f"{r['bbox/AP']:.1f}" for r in results)
        rows.append(
            f"| {name} | {len(results)} | "
            + " | ".join(fmt([r[m] for r in results]) for m in METRICS)
            + f" | {per_seed} | {statistics.mean(speeds):.2f} |"
        )
    return "\n".join(
        [
            "| config | seeds | AP | AP50 | AP75 | AP per seed | s/iter |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def add_teacher_args(parser, default: str, alternative: Optional[str] = None):
    """--seeds, --teacher-seed, --teacher-config (``default``; ``alternative``, if any, named in
    the help) and --jobs: the options every teacher -> student comparison script shares."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--teacher-seed", type=int, default=1)
    other = f"; another: {os.path.relpath(alternative, ROOT)}" if alternative else ""
    parser.add_argument(
        "--teacher-config",
        default=default,
        help=f"the teacher's recipe (default {os.path.relpath(default, ROOT)}{other})",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (GPU: several fit)")


def train_teacher(args, output: str, tag: str):
    """Train (once) the teacher of ``args.teacher_config`` at ``args.teacher_seed``; return
    (its markdown table, the config options that make a student distil from it)."""
    teacher = os.path.abspath(args.teacher_config)
    table = seed_table([teacher], [args.teacher_seed], output, tag=tag)
    name = os.path.splitext(os.path.basename(teacher))[0]
    weights = os.path.join(output, name, f"seed{args.teacher_seed}", "model_final.pth")
    return table, [
        "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        teacher,
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        weights,
    ]


def run_comparison(args, students: Sequence[str], with_teacher: Sequence[str], tag: str) -> str:
    """The projects' teacher -> student comparison: train the teacher of
    ``args.teacher_config`` (once) when a config of ``with_teacher`` is among ``students``,
    then every student config for ``args.seeds`` (those of ``with_teacher`` distilling from that
    teacher); print the teacher's and the students' tables and write them to
    ``args.output``/summary.md. Returns the text."""
    text = ""
    opts = {}
    if any(c in with_teacher for c in students):
        teacher_table, teacher_opts = train_teacher(args, args.output, tag)
        text += f"teacher\n\n{teacher_table}\n\n"
        opts = {c: teacher_opts for c in students if c in with_teacher}
    table = seed_table(students, args.seeds, args.output, opts, tag=tag, jobs=args.jobs)
    text += f"students, seeds {args.seeds}; mean ± sample std\n\n{table}\n"
    print(text)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(text)
    return text
