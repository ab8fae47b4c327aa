#!/usr/bin/env python
"""Export the student of a distillation run as a stand-alone detector checkpoint + config.

    python tools/export_student.py --config-file configs/Demo/deepforest_fitnet.yaml \
        --weights output/Demo/deepforest_fitnet/model_final.pth --output exported/ [KEY VALUE ...]

Then evaluate it like any detector:

    python train_net.py --config-file exported/config_student.yaml --eval-only

(or, for a stock-detectron2 student, with detectron2's own tools/train_net.py).
``--network teacher`` exports instead a teacher trained with the student (CoLAD's second
network) as model_teacher.pth + config_teacher.yaml.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lgdkd.modeling  # noqa: E402,F401  (registers lgdkd components)
from lgdkd.checkpoint import StrictLoadError  # noqa: E402
from lgdkd.data import apply_num_classes, register_datasets_from_cfg  # noqa: E402
from lgdkd.engine import load_config  # noqa: E402
from lgdkd.export import export_student, export_teacher, is_stock_detectron2  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--config-file", required=True, help="config the checkpoint was trained with")
    p.add_argument("--weights", default="", help="checkpoint (default: OUTPUT_DIR/model_final.pth)")
    p.add_argument("--output", required=True, help="folder for model_student.pth + config")
    p.add_argument(
        "--network",
        choices=["student", "teacher"],
        default="student",
        help="teacher: the network trained with the student (CoLearningTeacher)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = p.parse_args(argv)
    # as train_net.py resolves it: OUTPUT_DIR derived from the config path, class counts
    # from the training data (a run's own config.yaml already holds both)
    cfg = load_config(args)
    register_datasets_from_cfg(cfg, check=False)
    apply_num_classes(cfg)
    weights = args.weights or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if args.network == "teacher":
        w, c = export_teacher(cfg, weights, args.output)
        print(f"co-trained network weights: {w}\nconfig:  {c}")
        return
    w, c = export_student(cfg, weights, args.output)
    from lgdkd.export import student_config

    stock = is_stock_detectron2(student_config(cfg))
    print(f"student weights: {w}\nstudent config:  {c}")
    print(
        "the student is a stock detectron2 model (loads without lgdkd)"
        if stock
        else "the student uses lgdkd components: `import lgdkd.modeling` before building it"
    )


if __name__ == "__main__":
    try:
        main()
    except (StrictLoadError, FileNotFoundError, ValueError) as e:
        if os.environ.get("LGDKD_TRACEBACK"):
            raise
        sys.exit(f"export_student.py: error: {e}")
