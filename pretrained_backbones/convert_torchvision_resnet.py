#!/usr/bin/env python
"""Convert a torchvision ResNet-18/34/50/101/152 checkpoint for detectron2's MODEL.WEIGHTS.

    python pretrained_backbones/convert_torchvision_resnet.py resnet50-0676ba61.pth R-50-tv.pkl

The output is a detectron2 ".pkl" (``{"model": numpy arrays, "__author__": "torchvision",
"matching_heuristics": True}``) with detectron2 ResNet keys (``stem.conv1.weight``,
``res2.0.conv1.norm.running_mean``, ...). detectron2's checkpointer matches them to
``backbone.bottom_up.*`` (FPN) or ``backbone.*`` (C4) by suffix, as for its own ImageNet models.
The ImageNet classifier (``fc.*``) is dropped. Settings the weights need:

    MODEL:
      WEIGHTS: "R-50-tv.pkl"
      PIXEL_MEAN: [123.675, 116.28, 103.53]   # RGB order
      PIXEL_STD: [58.395, 57.12, 57.375]
      RESNETS:
        DEPTH: 50
        STRIDE_IN_1X1: False      # torchvision strides in the 3x3 conv (ResNet v1.5)
        RES2_OUT_CHANNELS: 64     # ResNet-18/34 only (256 for 50/101/152)
    INPUT:
      FORMAT: "RGB"

With ``--input-format BGR`` the input channels of conv1 are reversed so that detectron2's
default ``INPUT.FORMAT: "BGR"`` works; then give PIXEL_MEAN/PIXEL_STD in BGR order
([103.53, 116.28, 123.675] / [57.375, 57.12, 58.395]).
"""
import argparse
import pickle
import sys
from pathlib import Path

import lgdkd  # noqa: F401  (makes a pure-Python detectron2 importable)
from lgdkd.modeling.backbones.converters import read_state_dict, torchvision_resnet_to_detectron2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="torchvision ResNet state dict (.pth)")
    parser.add_argument("dst", help="output detectron2 checkpoint (.pkl)")
    parser.add_argument("--input-format", choices=("RGB", "BGR"), default="RGB")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read checkpoints that pickle Python objects (torch.load weights_only=False)",
    )
    args = parser.parse_args(argv)
    if not args.dst.endswith(".pkl"):
        parser.error("dst must end with .pkl (detectron2 applies its name matching to .pkl)")

    src = read_state_dict(args.src, weights_only=not args.trust_pickle)
    state = torchvision_resnet_to_detectron2(src, input_format=args.input_format)
    dropped = sorted(k for k in src if k.startswith("fc."))
    obj = {
        "model": {k: v.detach().cpu().numpy() for k, v in state.items()},
        "__author__": "torchvision",
        "matching_heuristics": True,
    }
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    with open(args.dst, "wb") as f:
        pickle.dump(obj, f)
    print(
        f"wrote {len(state)} tensors to {args.dst} (dropped the classifier {dropped} and "
        f"num_batches_tracked); input format {args.input_format}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
