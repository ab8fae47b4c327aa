#!/usr/bin/env python
"""Draw what one distillation step sees on one image, as PNG layers.

    python tools/visualize.py --config-file CONFIG [--weights CKPT] [--dataset NAME] \
        [--image-index I | --image-id ID] [--layers gt,student_pos,...] [--score-thresh 0.3] \
        [--top-proposals 20] --output DIR [KEY VALUE ...]

Writes DIR/<layer>.png for each layer and DIR/combined.png (all layers side by side), drawn on
the image as the test loader resizes it (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, no padding).
Layers: gt, student_pos, teacher_pos (LAD / CoLAD), ld_regions (LD), head_rois (HEAD /
TF-HEAD), lgd_energy (LGD), predictions; by default every layer the config's method has (see
lgdkd/visualize.py). Without --weights the model is the one training starts from.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import lgdkd.modeling  # noqa: E402,F401  (registers lgdkd components)
from lgdkd.checkpoint import StrictLoadError  # noqa: E402
from lgdkd.data import DatasetError, apply_num_classes, register_datasets_from_cfg  # noqa: E402
from lgdkd.engine import load_config  # noqa: E402
from lgdkd.visualize import LAYERS, visualize  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--config-file", required=True, help="a detector or distillation config")
    p.add_argument("--weights", default="", help="checkpoint (default: the initial weights)")
    p.add_argument("--dataset", default=None, help="registered set (default DATASETS.TRAIN[0])")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--image-index", type=int, default=None, help="record index (default 0)")
    which.add_argument("--image-id", default=None, help="record whose image_id is this")
    p.add_argument(
        "--layers",
        default="",
        help=f"comma-separated subset of {','.join(LAYERS)} (default: all the config has)",
    )
    p.add_argument("--score-thresh", type=float, default=0.3, help="predictions layer")
    p.add_argument("--top-proposals", type=int, default=20, help="head_rois layer")
    p.add_argument("--output", required=True, help="folder for the PNGs")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    register_datasets_from_cfg(cfg, check=False)
    apply_num_classes(cfg)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    layers = [x.strip() for x in args.layers.split(",") if x.strip()]
    paths = visualize(
        cfg,
        args.output,
        weights=args.weights,
        dataset=args.dataset,
        image_index=args.image_index,
        image_id=args.image_id,
        layers=layers,
        score_thresh=args.score_thresh,
        top_proposals=args.top_proposals,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    try:
        main()
    except (StrictLoadError, FileNotFoundError, ValueError, KeyError, DatasetError) as e:
        if os.environ.get("LGDKD_TRACEBACK"):
            raise
        sys.exit(f"visualize.py: error: {e}")
