#!/usr/bin/env python
"""Train or evaluate a detector (with or without distillation) from a config file.

    python train_net.py --config-file configs/LGD/retinanet_R_50_FPN_1x.yaml
    python train_net.py --config-file ... --resume                 # continue OUTPUT_DIR's run
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file ... --num-gpus 2             # 2 GPUs, or 2 CPU processes

Logic lives in lgdkd.engine; this script only wires it together, as detectron2's does.
"""
import os
import sys

import lgdkd.modeling  # noqa: F401  (registers meta-archs, backbones, ...)
from lgdkd.checkpoint import StrictLoadError
from lgdkd.data import DatasetError, ImageReadError
from lgdkd.engine import (
    ConfigKeyError,
    Trainer,
    default_argument_parser,
    default_backend,
    launch,
    load_config,
    setup,
)
from lgdkd.engine.checkpointer import load_for_evaluation, newest_readable_checkpoint

# Errors that describe bad input (config, weights, data): printed as one message, without a
# traceback (set LGDKD_TRACEBACK=1 to see it).
USER_ERRORS = (ConfigKeyError, DatasetError, FileNotFoundError, ImageReadError, StrictLoadError)


def main(args):
    try:
        return run(args)
    except USER_ERRORS as e:
        if os.environ.get("LGDKD_TRACEBACK"):
            raise
        sys.exit(f"train_net.py: error: {e}")


def run(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
        if args.resume:  # the run's newest readable checkpoint
            weights = newest_readable_checkpoint(cfg.OUTPUT_DIR) or weights
        load_for_evaluation(model, weights)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        backend = default_backend(load_config(args).MODEL.DEVICE)
    except (ConfigKeyError, FileNotFoundError) as e:
        sys.exit(f"train_net.py: error: {e}")
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=backend,
    )
