"""GFocal baseline vs LD on DeepForest: trains the teacher (once), then the baseline student and
the LD student for several seeds, evaluates every stage and prints a markdown table of mean and
spread of AP / AP50 / AP75 (also written to OUTPUT/summary.md).

    python projects/LD/deepforest_seeds.py
    python projects/LD/deepforest_seeds.py --seeds 1 2 3 --output output/LD/DeepForest

Finished runs are not repeated, so the script can be stopped and started again.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from seed_runs import seed_table  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs", "LD", "DeepForest")
TEACHER = os.path.join(CONFIGS, "gfl_EffLite0_teacher.yaml")
STUDENTS = [os.path.join(CONFIGS, c) for c in ("gfl_EffLite0.yaml", "gfl_EffLite0_ld.yaml")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--teacher-seed", type=int, default=1)
    p.add_argument("--output", default=os.path.join(ROOT, "output", "LD", "DeepForest"))
    args = p.parse_args(argv)
    teacher_table = seed_table([TEACHER], [args.teacher_seed], args.output, tag="ld-seeds")
    weights = os.path.join(
        args.output, "gfl_EffLite0_teacher", f"seed{args.teacher_seed}", "model_final.pth"
    )
    opts = {STUDENTS[1]: ["MODEL.DISTILL.TEACHER.WEIGHTS", weights]}
    table = seed_table(STUDENTS, args.seeds, args.output, opts, tag="ld-seeds")
    text = (
        f"teacher\n\n{teacher_table}\n\n"
        f"students, seeds {args.seeds}; mean ± sample std\n\n{table}\n"
    )
    print(text)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
