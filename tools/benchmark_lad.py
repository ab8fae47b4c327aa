"""Training cost of LAD, SoLAD and CoLAD next to the plain PAA student, measured side by side in
one process on one fixed batch (DeepForest configs of configs/LAD/DeepForest).

    python tools/benchmark_lad.py                   # CPU, batch 4 at 400 x 400
    python tools/benchmark_lad.py --device cuda --rounds 5

Models: the plain student (paa_EffLite0.yaml); LAD (frozen teacher forward + the teacher's PAA
assignment); SoLAD (LAD + soft-label losses); CoLAD (a second PAA network trained with the
student: two forwards, two backwards). The frozen teacher has random weights (the cost hardly
depends on the values; the assignment's cost grows with the number of candidates). One
"iteration" = forward, backward and SGD step; the models take turns for --rounds rounds of
--iters iterations and the table reports the median s/iter of each, its ratio to the plain
student and the extra s/iter.
"""

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from benchmark_ld import random_teacher_weights  # noqa: E402
from benchmark_lgd import build, fixed_batch, load_cfg, print_table, time_rounds  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs", "LAD", "DeepForest")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args(argv)

    sys.path.insert(0, ROOT)
    import lgdkd.modeling  # noqa: F401

    os.chdir(ROOT)  # configs name their teacher config relative to the repository root
    tmp = tempfile.mkdtemp()
    plain = load_cfg(os.path.join(CONFIGS, "paa_EffLite0.yaml"), args.device)
    lad_path = os.path.join(CONFIGS, "paa_EffLite0_lad.yaml")
    weights = random_teacher_weights(tmp, load_cfg(lad_path, args.device))
    teacher = ["MODEL.DISTILL.TEACHER.WEIGHTS", weights]
    runs = {
        "plain student": build(plain),
        "LAD": build(load_cfg(lad_path, args.device, teacher)),
        "SoLAD": build(
            load_cfg(os.path.join(CONFIGS, "paa_EffLite0_solad.yaml"), args.device, teacher)
        ),
        "CoLAD (two networks)": build(
            load_cfg(os.path.join(CONFIGS, "paa_EffLite0_colad.yaml"), args.device)
        ),
    }
    batch = fixed_batch(plain, args.batch)
    size = tuple(batch[0]["image"].shape[-2:])
    times = time_rounds(runs, batch, 0, args)
    title = f"PAA EffLite0 (DeepForest), batch {args.batch} x {size[0]}x{size[1]}"
    print_table(title, runs, times, args)


if __name__ == "__main__":
    main()
