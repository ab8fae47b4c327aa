"""Training cost of LD next to the plain GFocal student, measured side by side in one process
on one fixed batch (DeepForest configs of configs/LD/DeepForest).

    python tools/benchmark_ld.py                   # CPU, batch 4 at 400 x 400
    python tools/benchmark_ld.py --device cuda --rounds 5

Models: the plain student (gfl_EffLite0.yaml); LD with the main region only (Main LD;
MMDetection's LDHead); Main LD + VLR LD (gfl_EffLite0_ld.yaml); and with Main KD added
(gfl_EffLite0_ld_kd.yaml: a binary KD, since the data set has one class).
The teacher is the config's teacher architecture with random weights (the cost does not depend
on the values). One "iteration" = forward (student and frozen teacher), backward and SGD step;
the models take turns for --rounds rounds of --iters iterations and the table reports the median
s/iter of each, its ratio to the plain student and the extra s/iter.
"""

import argparse
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from benchmark_lgd import build, fixed_batch, load_cfg, print_table, time_rounds  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs", "LD", "DeepForest")


def random_teacher_weights(tmp, ld_cfg):
    from detectron2.modeling import build_model

    from lgdkd.modeling.teachers.pretrained import build_teacher_config

    torch.manual_seed(1)
    path = os.path.join(tmp, "teacher.pth")
    torch.save({"model": build_model(build_teacher_config(ld_cfg)).state_dict()}, path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args(argv)

    sys.path.insert(0, ROOT)
    import lgdkd.modeling  # noqa: F401

    os.chdir(ROOT)  # the LD config names its teacher config relative to the repository root
    tmp = tempfile.mkdtemp()
    plain = load_cfg(os.path.join(CONFIGS, "gfl_EffLite0.yaml"), args.device)
    ld_path = os.path.join(CONFIGS, "gfl_EffLite0_ld.yaml")
    weights = random_teacher_weights(tmp, load_cfg(ld_path, args.device))
    teacher = ["MODEL.DISTILL.TEACHER.WEIGHTS", weights]
    main_only = ["MODEL.DISTILL.LD.KD_WEIGHT", "0.0", "MODEL.DISTILL.LD.VLR_WEIGHT", "0.0"]
    runs = {
        "plain student": build(plain),
        "LD, main region": build(load_cfg(ld_path, args.device, teacher + main_only)),
        "LD, main + VLR": build(load_cfg(ld_path, args.device, teacher)),
        "LD, main + VLR + KD": build(
            load_cfg(os.path.join(CONFIGS, "gfl_EffLite0_ld_kd.yaml"), args.device, teacher)
        ),
    }
    batch = fixed_batch(plain, args.batch)
    size = tuple(batch[0]["image"].shape[-2:])
    times = time_rounds(runs, batch, 0, args)
    title = f"GFocal EffLite0 (DeepForest), batch {args.batch} x {size[0]}x{size[1]}"
    print_table(title, runs, times, args)


if __name__ == "__main__":
    main()
