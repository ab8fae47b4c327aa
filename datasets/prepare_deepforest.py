"""Generate the DeepForest tree-crown sets (once) and print their statistics.

    python datasets/prepare_deepforest.py                 # under $DETECTRON2_DATASETS or datasets/
    python datasets/prepare_deepforest.py --root /data    # under /data/deepforest
    python datasets/prepare_deepforest.py --force         # delete and generate again

Training does the same preparation on first use; this script only makes it explicit.
The result is checked against the sha256 pinned in lgdkd/data/deepforest.py.
"""

import argparse
import os
import shutil
import sys

try:
    import lgdkd  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lgdkd.data.deepforest import (  # noqa: E402
    FOLDER,
    deepforest_statistics,
    default_datasets_root,
    prepare_deepforest,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=None,
        help="data sets root (default: $DETECTRON2_DATASETS, else the checkout's datasets/)",
    )
    parser.add_argument(
        "--force", action="store_true", help="delete <root>/deepforest first and regenerate it"
    )
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root or default_datasets_root())
    if args.force and os.path.isdir(os.path.join(root, FOLDER)):
        shutil.rmtree(os.path.join(root, FOLDER))
    dataset_dir = prepare_deepforest(root)
    print(f"DeepForest tree crowns in {dataset_dir} (class: Tree)")
    header = (
        f"{'split':<6} {'tiles':>5} {'empty':>5} {'boxes':>5}  box w min/med/max  box h min/med/max"
    )
    print(header)
    stats = deepforest_statistics(dataset_dir)
    for split, s in stats.items():
        w = "/".join(f"{v:g}" for v in s["width"])
        h = "/".join(f"{v:g}" for v in s["height"])
        print(f"{split:<6} {s['tiles']:>5} {s['empty_tiles']:>5} {s['boxes']:>5}  {w:<17}  {h}")
    for split, s in stats.items():
        print(f"{split}: scenes {', '.join(s['scenes'])}")
        print(f"{split}: annotations/deepforest_{split}.json sha256 {s['json_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
