"""RetinaNet baseline vs Assist vs HEAD vs TF-HEAD on DeepForest: trains the Faster R-CNN teacher
(once), then each student for several seeds, evaluates every run and prints a markdown table of
mean and spread of AP / AP50 / AP75 (also written to OUTPUT/summary.md).

    python projects/HEAD/deepforest_seeds.py
    python projects/HEAD/deepforest_seeds.py --methods baseline head --seeds 1 2
    python projects/HEAD/deepforest_seeds.py --jobs 8        # several runs at a time (GPU)

Finished runs are not repeated, so the script can be stopped and started again.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from seed_runs import seed_table, train_teacher  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs", "HEAD", "DeepForest")
TEACHER = os.path.join(CONFIGS, "faster_rcnn_EffLite0_teacher_ms2x.yaml")
METHODS = {
    "baseline": "retinanet_EffLite0.yaml",
    "assist": "retinanet_EffLite0_assist.yaml",
    "head": "retinanet_EffLite0_head.yaml",
    "tfhead": "retinanet_EffLite0_tfhead.yaml",
}
NEEDS_TEACHER = ("head",)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--teacher-seed", type=int, default=1)
    p.add_argument("--teacher-config", default=TEACHER)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (GPU: several fit)")
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    p.add_argument("--output", default=os.path.join(ROOT, "output", "HEAD", "DeepForest"))
    args = p.parse_args(argv)
    text = ""
    opts = {}
    if any(m in NEEDS_TEACHER for m in args.methods):
        teacher_table, teacher_opts = train_teacher(args, args.output, "head-seeds")
        text += f"teacher\n\n{teacher_table}\n\n"
        for m in NEEDS_TEACHER:
            opts[os.path.join(CONFIGS, METHODS[m])] = teacher_opts
    students = [os.path.join(CONFIGS, METHODS[m]) for m in args.methods]
    table = seed_table(students, args.seeds, args.output, opts, tag="head-seeds", jobs=args.jobs)
    text += f"students, seeds {args.seeds}; mean ± sample std\n\n{table}\n"
    print(text)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
