"""PAA baseline vs LAD vs SoLAD vs CoLAD on DeepForest: trains the PAA teacher (once), then each
student for several seeds, evaluates every run and prints a markdown table of mean and spread
of AP / AP50 / AP75 and each student's paired comparison with the baseline (per-seed
differences, 95 % CI, Welch p, pooled seed std, verdict on --primary, AP50 by default), also
written to OUTPUT/summary.md.

    python projects/LAD/deepforest_seeds.py
    python projects/LAD/deepforest_seeds.py --seeds 1 2 3 --output output/LAD/DeepForest
    python projects/LAD/deepforest_seeds.py --methods baseline lad   # a subset
    python projects/LAD/deepforest_seeds.py --methods baseline boxloss lad --choose-teacher \
        --seeds 1 2 3 4 5 6 7 8 --jobs 2 --threads 1   # the 8-seed study: teacher chosen on dev,
                                                       # LAD also against its box-loss control
    python projects/LAD/deepforest_seeds.py --jobs 6 \
        --teacher-config configs/LAD/DeepForest/paa_EffLite0_teacher_ms4x.yaml   # on a GPU

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

CONFIGS = os.path.join(ROOT, "configs", "LAD", "DeepForest")
TEACHER = os.path.join(CONFIGS, "paa_EffLite0_teacher.yaml")
TEACHER_LONG = os.path.join(CONFIGS, "paa_EffLite0_teacher_ms4x.yaml")
METHODS = {
    "baseline": "paa_EffLite0.yaml",
    "boxloss": "paa_EffLite0_boxloss.yaml",
    "lad": "paa_EffLite0_lad.yaml",
    "solad": "paa_EffLite0_solad.yaml",
    "colad": "paa_EffLite0_colad.yaml",
    "softlabel": "paa_EffLite0_softlabel.yaml",
}
NEEDS_TEACHER = ("lad", "solad", "softlabel")
# LAD's config also switches the box loss; the control switches only that
CONTROLS = {"lad": "boxloss"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_teacher_args(p, TEACHER, TEACHER_LONG)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(METHODS),
        default=["baseline", "lad", "solad", "colad"],
    )
    p.add_argument("--output", default=os.path.join(ROOT, "output", "LAD", "DeepForest"))
    args = p.parse_args(argv)
    students = [os.path.join(CONFIGS, METHODS[m]) for m in args.methods]
    with_teacher = [os.path.join(CONFIGS, METHODS[m]) for m in NEEDS_TEACHER]
    controls = {
        os.path.join(CONFIGS, METHODS[arm]): os.path.join(CONFIGS, METHODS[control])
        for arm, control in CONTROLS.items()
        if arm in args.methods and control in args.methods
    }
    run_comparison(args, students, with_teacher, "lad-seeds", controls)


if __name__ == "__main__":
    main()
