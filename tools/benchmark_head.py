"""Training cost of HEAD's variants next to the plain RetinaNet student, measured side by side
in one process on one fixed batch (DeepForest configs of configs/HEAD/DeepForest).

    python tools/benchmark_head.py                   # CPU, batch 4 at 400 x 400
    python tools/benchmark_head.py --device cuda --rounds 5

Models: the plain student (retinanet_EffLite0.yaml); Assist (proposals from the student, RoI
sampling, the assistant's RoI head and losses); HEAD (Assist + the frozen Faster R-CNN
teacher's backbone, FPN and RoI head on the sampled RoIs + AKD + CKD); TF-HEAD (Assist + an
FCOS assistant + self-distillation). The frozen teacher has random weights (the cost does not
depend on the values). Iterations start at --start (default 60, after the KD warm-up, so every
loss is computed). One "iteration" = forward, backward and SGD step; the models take turns for
--rounds rounds of --iters iterations and the table reports the median s/iter of each, its
ratio to the plain student and the extra s/iter.
"""

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from benchmark_ld import random_teacher_weights  # noqa: E402
from benchmark_lgd import build, fixed_batch, load_cfg, print_table, time_rounds  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs", "HEAD", "DeepForest")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--start", type=int, default=60)
    args = p.parse_args(argv)

    sys.path.insert(0, ROOT)
    import lgdkd.modeling  # noqa: F401

    os.chdir(ROOT)  # configs name their teacher config relative to the repository root
    tmp = tempfile.mkdtemp()
    plain = load_cfg(os.path.join(CONFIGS, "retinanet_EffLite0.yaml"), args.device)
    head_path = os.path.join(CONFIGS, "retinanet_EffLite0_head.yaml")
    weights = random_teacher_weights(tmp, load_cfg(head_path, args.device))
    runs = {
        "plain student": build(plain),
        "Assist": build(
            load_cfg(os.path.join(CONFIGS, "retinanet_EffLite0_assist.yaml"), args.device)
        ),
        "HEAD (Assist + AKD + CKD)": build(
            load_cfg(head_path, args.device, ["MODEL.DISTILL.TEACHER.WEIGHTS", weights])
        ),
        "TF-HEAD": build(
            load_cfg(os.path.join(CONFIGS, "retinanet_EffLite0_tfhead.yaml"), args.device)
        ),
    }
    batch = fixed_batch(plain, args.batch)
    size = tuple(batch[0]["image"].shape[-2:])
    times = time_rounds(runs, batch, args.start, args)
    title = f"RetinaNet EffLite0 (DeepForest), batch {args.batch} x {size[0]}x{size[1]}"
    print_table(title, runs, times, args)


if __name__ == "__main__":
    main()
