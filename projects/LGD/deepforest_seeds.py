"""Baseline vs LGD on DeepForest, several seeds each: trains every (config, seed) pair that has
no final evaluation yet, then prints a markdown table of mean and spread of AP / AP50 / AP75
and each LGD arm's paired comparison with its own baseline (per-seed differences, 95 % CI,
Welch p, pooled seed std, verdict on the primary metric, AP50 by default).

    python projects/LGD/deepforest_seeds.py                        # RetinaNet + Faster R-CNN
    python projects/LGD/deepforest_seeds.py --pairs retinanet --seeds 1 2 3

Runs go to OUTPUT/<config name>/<key>/seed<k> (default OUTPUT = output/LGD/DeepForest), the key
being a hash of the resolved config and the weights it names (tools/seed_runs.py); a finished
run under the same key is not repeated, so the script can be stopped and started again, and an
edited config trains anew. The report is also written to OUTPUT/summary.md.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from seed_runs import add_primary_arg, seed_table  # noqa: E402

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
    add_primary_arg(p)
    args = p.parse_args(argv)
    pairs = [[os.path.join(CONFIGS, c) for c in PAIRS[pair]] for pair in args.pairs]
    configs = [c for pair in pairs for c in pair]
    baselines = {lgd: base for base, lgd in pairs}
    table = seed_table(
        configs, args.seeds, args.output, tag="lgd-seeds", baselines=baselines, primary=args.primary
    )
    text = f"seeds {args.seeds}; mean ± sample standard deviation\n\n{table}\n"
    print(text)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
