#!/usr/bin/env python
"""How a distillation loss pulls on the student, next to its own detection loss.

    python tools/diagnose_distill.py \
        --config-file configs/ProvingGround/retinanet_EffLite0_fitnet.yaml \
        [--weights RUN/model_0000099.pth] [--batches 4] [KEY VALUE ...]

On a few training batches (the config's training loader, its first iterations), the task
losses (``loss_*`` that are not ``loss_distill_*``) and the distillation losses are
back-propagated separately, and for each part of the student (bottom-up backbone, FPN, head)
this prints: the two losses, the norms of their gradients, the ratio of the norms and the
cosine between the two gradients (negative: the distillation term pulls against detection).
``--weights`` starts from a checkpoint of the run (e.g. a periodic one) instead of the
initial weights. Distillation is forced on (the schedule's weight is 1).
"""

import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import lgdkd.modeling  # noqa: E402,F401
from lgdkd.data import apply_num_classes, register_datasets_from_cfg  # noqa: E402
from lgdkd.engine import Trainer, load_config  # noqa: E402
from lgdkd.engine.checkpointer import load_for_evaluation, load_initial_weights  # noqa: E402
from lgdkd.modeling.distill.schedule import DistillSchedule  # noqa: E402

PARTS = ("backbone.bottom_up", "backbone", "head")


def _part(name: str) -> str:
    for p in PARTS:
        if name.startswith("student." + p):
            return p if p != "backbone" else "fpn"
    return "other"


def gradients(model, loss):
    """{part: flattened gradient of ``loss``} over the student's trainable parameters."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], retain_graph=True, allow_unused=True)
    out = defaultdict(list)
    for (n, p), g in zip(params, grads):
        if n.startswith("student."):
            out[_part(n)].append((torch.zeros_like(p) if g is None else g).flatten())
    return {k: torch.cat(v) for k, v in out.items()}


def diagnose(cfg, weights: str = "", batches: int = 4):
    """Rows (batch, part, task loss, distill loss, |g_task|, |g_distill|, ratio, cosine)."""
    model = Trainer.build_model(cfg)
    if weights:
        load_for_evaluation(model, weights)
    else:
        load_initial_weights(model, cfg.MODEL.WEIGHTS)
    model.schedule = DistillSchedule()  # distillation on at every iteration, full weight
    model.train()
    loader = iter(Trainer.build_train_loader(cfg))
    rows = []
    with EventStorage(0):
        for b in range(batches):
            losses = model(next(loader))
            task = sum(v for k, v in losses.items() if not k.startswith("loss_distill_"))
            distill = sum(v for k, v in losses.items() if k.startswith("loss_distill_"))
            g_task, g_dist = gradients(model, task), gradients(model, distill)
            for part in sorted(g_task):
                a, d = g_task[part], g_dist[part]
                na, nd = float(a.norm()), float(d.norm())
                cos = float(torch.dot(a, d) / (na * nd)) if na > 0 and nd > 0 else float("nan")
                rows.append(
                    (b, part, float(task), float(distill), na, nd, nd / max(na, 1e-12), cos)
                )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="a checkpoint of the run to start from")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cfg = load_config(args)
    register_datasets_from_cfg(cfg)
    apply_num_classes(cfg)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 0
    rows = diagnose(cfg, args.weights, args.batches)
    print("batch | part | task loss | distill loss | |g task| | |g distill| | ratio | cosine")
    print("---|---|---|---|---|---|---|---")
    for r in rows:
        print(" | ".join([str(r[0]), r[1]] + [f"{x:.4g}" for x in r[2:]]))


if __name__ == "__main__":
    main()
