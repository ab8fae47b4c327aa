#!/usr/bin/env python
"""LD loss values for the same images split over workers in different ways.

The same N images (default 4, the first of DATASETS.TRAIN, resized to INPUT.MIN_SIZE_TEST, no
flip) go through an LD distillation model (student + frozen teacher) as

* 1 worker x N images,
* 1 worker x N/2 images (the first half only: what one of two workers sees),
* 2 gloo processes x N/2 images (the loss a DDP run optimises: the mean of the two workers'),

for every MODEL.DISTILL.LD.NORM. A batch-invariant normalisation gives the same value for
"1 x N" and "2 x N/2"; the official ("legacy") sums halve when the images per GPU halve.
The student is in eval mode so that its outputs do not depend on the batch composition
(frozen BN / GN models give the training outputs unchanged).

    python tools/ld_batch_invariance.py --config-file configs/LD/DeepForest/gfl_EffLite0_ld.yaml
"""

import argparse
import os
import sys
from typing import Dict, List

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lgdkd  # noqa: E402, F401
import lgdkd.modeling  # noqa: E402, F401
from lgdkd.config import get_cfg  # noqa: E402
from lgdkd.data import apply_num_classes, register_datasets_from_cfg  # noqa: E402
from lgdkd.engine.launch import launch  # noqa: E402

NORMS = ("per_image", "weight_sum", "legacy")


def _cfg(config_file: str, opts: List[str]):
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.MODEL.DEVICE = "cpu"
    register_datasets_from_cfg(cfg)
    apply_num_classes(cfg)
    cfg.freeze()
    return cfg


def _batch(cfg, indices: List[int]):
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T

    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    return [mapper(dicts[i]) for i in indices]


def ld_losses(cfg, indices: List[int]) -> Dict[str, Dict[str, float]]:
    """{norm: {loss name: value}} of the distillers on the images ``indices``."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)  # the same student in every process
    model = build_model(cfg)
    model.eval()
    batch = _batch(cfg, indices)
    adapter = model._adapter
    out = {}
    with torch.no_grad(), EventStorage(0):
        images, gt = adapter.preprocess(model.student, batch)
        student = adapter.run(model.student, images, gt)
        student.targets = adapter.targets(model.student, student)
        teacher = model.teacher(batch, student)
        for norm in NORMS:
            values = {}
            for d in model.distillers:
                d.norm = norm
                values.update({k: float(v) for k, v in d(student, teacher).items()})
            out[norm] = values
    return out


def _worker(config_file, opts, indices_per_rank, result_file):
    from detectron2.utils import comm

    cfg = _cfg(config_file, opts)
    local = ld_losses(cfg, indices_per_rank[comm.get_rank()])
    gathered = [None] * comm.get_world_size()
    dist.all_gather_object(gathered, local)
    if comm.get_rank() == 0:
        mean = {
            norm: {k: sum(g[norm][k] for g in gathered) / len(gathered) for k in local[norm]}
            for norm in local
        }
        torch.save(mean, result_file)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--images", type=int, default=4, help="even number of images")
    parser.add_argument("--output", default="", help="also write the table (markdown) here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.images < 2 or args.images % 2:
        parser.error("--images must be an even number >= 2")
    cfg = _cfg(args.config_file, args.opts)
    n, half = args.images, args.images // 2
    rows = {
        f"1 worker x {n} images": ld_losses(cfg, list(range(n))),
        f"1 worker x {half} images (first half)": ld_losses(cfg, list(range(half))),
    }
    result_file = os.path.join(cfg.OUTPUT_DIR or ".", ".ld_batch_invariance.pt")
    os.makedirs(os.path.dirname(os.path.abspath(result_file)), exist_ok=True)
    split = [list(range(half)), list(range(half, n))]
    launch(
        _worker,
        2,
        dist_url="auto",
        args=(args.config_file, args.opts, split, result_file),
        backend="gloo",
    )
    rows[f"2 gloo processes x {half} images (mean)"] = torch.load(result_file)
    os.remove(result_file)

    names = sorted({k for r in rows.values() for v in r.values() for k in v})
    lines = ["| NORM | split | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for norm in NORMS:
        for split_name, r in rows.items():
            vals = " | ".join(f"{r[norm][k]:.6g}" for k in names)
            lines.append(f"| {norm} | {split_name} | {vals} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
