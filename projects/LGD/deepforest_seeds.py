"""Baseline vs LGD on DeepForest, several seeds each: trains every (config, seed) pair that has
no final evaluation yet, then prints a markdown table of mean and spread of AP / AP50 / AP75.

    python projects/LGD/deepforest_seeds.py                        # RetinaNet + Faster R-CNN
    python projects/LGD/deepforest_seeds.py --pairs retinanet --seeds 1 2 3

Runs go to OUTPUT/<config name>/seed<k> (default OUTPUT = output/LGD/DeepForest); a run that
finished is not repeated, so the script can be stopped and started again. The table is also
written to OUTPUT/summary.md.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from seed_runs import seed_table  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs", "LGD", "DeepForest")
PAIRS = {
    "retinanet": ("retinanet_EffLite0.yaml", "retinanet_EffLite0_lgd.yaml"),
    "faster_rcnn": ("faster_rcnn_EffLite0.yaml", "faster_rcnn_EffLite0_lgd.yaml"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--output", default=os.path.join(ROOT, "output", "LGD", "DeepForest"))
    args = p.parse_args(argv)
    configs = [os.path.join(CONFIGS, c) for pair in args.pairs for c in PAIRS[pair]]
    table = seed_table(configs, args.seeds, args.output, tag="lgd-seeds")
    print(table)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(f"seeds {args.seeds}; mean ± sample standard deviation\n\n{table}\n")


if __name__ == "__main__":
    main()
