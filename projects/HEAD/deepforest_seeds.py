"""RetinaNet baseline vs Assist vs HEAD vs TF-HEAD on DeepForest: trains the Faster R-CNN teacher
(once), then each student for several seeds, evaluates every run and prints a markdown table of
mean and spread of AP / AP50 / AP75 and each student's paired comparison with the baseline
(per-seed differences, 95 % CI, Welch p, pooled seed std, verdict on --primary, AP50 by
default), also written to OUTPUT/summary.md.

    python projects/HEAD/deepforest_seeds.py
    python projects/HEAD/deepforest_seeds.py --methods baseline head --seeds 1 2
    python projects/HEAD/deepforest_seeds.py --jobs 8        # several runs at a time (GPU)

Runs go to OUTPUT/<config name>/<key>/seed<k>, the key being a hash of the resolved config, the
weights it names and its teacher's config and weights (tools/seed_runs.py). Finished runs under
the same key are not repeated, so the script can be stopped and started again; an edited config
or a retrained teacher gives new keys, and so new runs.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from seed_runs import add_teacher_args, run_comparison  # noqa: E402

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
    add_teacher_args(p, TEACHER)
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    p.add_argument("--output", default=os.path.join(ROOT, "output", "HEAD", "DeepForest"))
    args = p.parse_args(argv)
    students = [os.path.join(CONFIGS, METHODS[m]) for m in args.methods]
    with_teacher = [os.path.join(CONFIGS, METHODS[m]) for m in NEEDS_TEACHER]
    run_comparison(args, students, with_teacher, "head-seeds")


if __name__ == "__main__":
    main()
