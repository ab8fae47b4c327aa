"""GFocal baseline vs LD on DeepForest: trains the teacher (once), then the baseline student and
the LD student for several seeds, evaluates every stage and prints a markdown table of mean and
spread of AP / AP50 / AP75 and each student's paired comparison with the baseline (per-seed
differences, 95 % CI, Welch p, pooled seed std, verdict on --primary, AP50 by default), also
written to OUTPUT/summary.md.

    python projects/LD/deepforest_seeds.py
    python projects/LD/deepforest_seeds.py --seeds 1 2 3 --output output/LD/DeepForest
    python projects/LD/deepforest_seeds.py --jobs 6 \
        --teacher-config configs/LD/DeepForest/gfl_EffLite0_teacher_ms4x.yaml   # on a GPU

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

CONFIGS = os.path.join(ROOT, "configs", "LD", "DeepForest")
TEACHER = os.path.join(CONFIGS, "gfl_EffLite0_teacher.yaml")
TEACHER_LONG = os.path.join(CONFIGS, "gfl_EffLite0_teacher_ms4x.yaml")
STUDENTS = ("gfl_EffLite0.yaml", "gfl_EffLite0_ld.yaml")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_teacher_args(p, TEACHER, TEACHER_LONG)
    p.add_argument(
        "--students",
        nargs="+",
        default=list(STUDENTS),
        help="student configs of configs/LD/DeepForest (the baseline first; the others distil "
        "from the teacher), e.g. add gfl_EffLite0_ld_wsum.yaml for the normalisation ablation",
    )
    p.add_argument("--output", default=os.path.join(ROOT, "output", "LD", "DeepForest"))
    args = p.parse_args(argv)
    students = [os.path.join(CONFIGS, c) for c in args.students]
    run_comparison(args, students, students[1:], "ld-seeds")


if __name__ == "__main__":
    main()
