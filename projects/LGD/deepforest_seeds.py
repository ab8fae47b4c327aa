"""Baseline vs LGD on DeepForest, several seeds each: trains every (config, seed) pair that has
no final evaluation yet, then prints a markdown table of mean and spread of AP / AP50 / AP75.

    python projects/LGD/deepforest_seeds.py                        # RetinaNet + Faster R-CNN
    python projects/LGD/deepforest_seeds.py --pairs retinanet --seeds 1 2 3

Runs go to OUTPUT/<config name>/seed<k> (default OUTPUT = output/LGD/DeepForest); a run that
finished is not repeated, so the script can be stopped and started again. The table is also
written to OUTPUT/summary.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs", "LGD", "DeepForest")
PAIRS = {
    "retinanet": ("retinanet_EffLite0.yaml", "retinanet_EffLite0_lgd.yaml"),
    "faster_rcnn": ("faster_rcnn_EffLite0.yaml", "faster_rcnn_EffLite0_lgd.yaml"),
}
METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75")


def final_record(out_dir):
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


def train(config, seed, out_dir):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        os.path.join(CONFIGS, config),
        "SEED",
        str(seed),
        "OUTPUT_DIR",
        out_dir,
    ]
    print(f"[lgd-seeds] {config} seed {seed} -> {out_dir}", flush=True)
    t0 = time.time()
    with open(out_dir + ".stdout.txt", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"[lgd-seeds] {config} seed {seed} failed; see {out_dir}.stdout.txt")
    print(f"[lgd-seeds]   done in {time.time() - t0:.0f} s", flush=True)


def fmt(values):
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--output", default=os.path.join(ROOT, "output", "LGD", "DeepForest"))
    args = p.parse_args(argv)
    rows = []
    for pair in args.pairs:
        for config in PAIRS[pair]:
            name = os.path.splitext(config)[0]
            results, speeds = [], []
            for seed in args.seeds:
                out = os.path.join(args.output, name, f"seed{seed}")
                rec, s_iter = final_record(out)
                if rec is None:
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    train(config, seed, out)
                    rec, s_iter = final_record(out)
                results.append(rec)
                speeds.append(s_iter)
            per_seed = " / ".join(f"{r['bbox/AP']:.1f}" for r in results)
            rows.append(
                f"| {name} | {len(results)} | "
                + " | ".join(fmt([r[m] for r in results]) for m in METRICS)
                + f" | {per_seed} | {statistics.mean(speeds):.2f} |"
            )
    table = "\n".join(
        [
            "| config | seeds | AP | AP50 | AP75 | AP per seed | s/iter |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(f"seeds {args.seeds}; mean ± sample standard deviation\n\n{table}\n")


if __name__ == "__main__":
    main()
