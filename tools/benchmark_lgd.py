"""Training cost of LGD next to the plain student (and, optionally, next to FitNet from a
larger pretrained teacher), measured side by side in one process on one fixed batch.

    python tools/benchmark_lgd.py                                   # DeepForest RetinaNet, CPU
    python tools/benchmark_lgd.py --family faster_rcnn --rounds 3
    python tools/benchmark_lgd.py --with-teacher-baseline            # + FitNet (EffLite2 teacher)
    python tools/benchmark_lgd.py --device cuda

A second table times LGD's teacher alone (forward + backward of its maps, student features
fixed): lgdkd's vectorised teacher next to a per-image re-statement of the official code's
structure (lgdkd.modeling.teachers.lgd_reference) with the same weights.

One "iteration" = forward, backward and SGD step of the whole training model (student,
LGD teacher and adapter). The models take turns for ``--rounds`` rounds of ``--iters``
iterations each, so that machine noise hits them alike; the table reports the median
seconds per iteration of each, the ratio to the plain student and the extra cost
(s/iter above the plain student). The batch is the first ``--batch`` DeepForest training
tiles at the config's training size.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "retinanet": ("retinanet_EffLite0.yaml", "retinanet_EffLite0_lgd.yaml"),
    "faster_rcnn": ("faster_rcnn_EffLite0.yaml", "faster_rcnn_EffLite0_lgd.yaml"),
}
TEACHER_CONFIG = os.path.join(ROOT, "configs", "Backbones", "retinanet_EffLite2_FPN_1x.yaml")


def load_cfg(path, device, opts=()):
    from lgdkd.config import get_cfg
    from lgdkd.data import apply_num_classes, register_datasets_from_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = device
    register_datasets_from_cfg(cfg)
    apply_num_classes(cfg)
    return cfg


def fixed_batch(cfg, n):
    from detectron2.data import DatasetCatalog

    from lgdkd.data import CheckedDatasetMapper

    mapper = CheckedDatasetMapper(cfg, True)
    torch.manual_seed(0)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:n]]


def random_teacher(tmp, cfg_student, device):
    """A FitNet teacher (EfficientNet-Lite2 RetinaNet, random weights: the cost is the same)."""
    from detectron2.modeling import build_model

    tcfg = load_cfg(
        TEACHER_CONFIG,
        device,
        [
            "MODEL.RETINANET.NUM_CLASSES",
            str(cfg_student.MODEL.RETINANET.NUM_CLASSES),
            "MODEL.FPN.OUT_CHANNELS",
            str(cfg_student.MODEL.FPN.OUT_CHANNELS),
            "MODEL.TIMM.PRETRAINED",
            "",
            "DATASETS.TRAIN",
            str(tuple(cfg_student.DATASETS.TRAIN)),
            "DATASETS.TEST",
            str(tuple(cfg_student.DATASETS.TEST)),
        ],
    )
    cfg_path, w_path = os.path.join(tmp, "teacher.yaml"), os.path.join(tmp, "teacher.pth")
    with open(cfg_path, "w") as f:
        f.write(tcfg.dump())
    torch.save({"model": build_model(tcfg).state_dict()}, w_path)
    return [
        "MODEL.META_ARCHITECTURE",
        "DistillationDetector",
        "MODEL.DISTILL.STUDENT_META_ARCHITECTURE",
        "RetinaNet",
        "MODEL.DISTILL.TEACHER.NAME",
        "PretrainedTeacher",
        "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        cfg_path,
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        w_path,
        "MODEL.DISTILL.DISTILLERS",
        "['FeatureMimicDistiller']",
        "MODEL.DISTILL.FEATURE_MIMIC.NORM",
        "instance",
    ]


def build(cfg):
    from detectron2.modeling import build_model

    from lgdkd.engine import Trainer

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model, Trainer.build_optimizer(cfg, model)


def step(model, optimizer, batch, iteration, device):
    from detectron2.utils.events import EventStorage

    with EventStorage(iteration):
        losses = model(batch)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_rounds(runs, batch, start, args):
    """{name: [s/iter of each round]}: one warm-up step each, then ``args.rounds`` rounds in
    which every model takes ``args.iters`` steps in turn (iterations from ``start``)."""
    times = {k: [] for k in runs}
    for name, (model, opt) in runs.items():  # warm-up
        step(model, opt, batch, start, args.device)
    for r in range(args.rounds):
        for name, (model, opt) in runs.items():
            t0 = time.perf_counter()
            for i in range(args.iters):
                step(model, opt, batch, start + 1 + r * args.iters + i, args.device)
            times[name].append((time.perf_counter() - t0) / args.iters)
            print(f"[round {r + 1}/{args.rounds}] {name}: {times[name][-1]:.3f} s/iter", flush=True)
    return times


def print_table(title, runs, times, args):
    """Markdown table of the median s/iter of each run next to the "plain student"'s."""
    base = statistics.median(times["plain student"])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"\n{title}, {device}, {torch.get_num_threads()} threads, median of {args.rounds} "
        f"rounds x {args.iters} it\n"
    )
    print("| model | s/iter | x plain student | extra s/iter |")
    print("|---|---|---|---|")
    for name in runs:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.3f} | {t / base:.2f} | {t - base:+.3f} |")


def teacher_table(model, batch, args):
    """Median s per forward + backward of the vectorised teacher and of the reference."""
    from lgdkd.modeling.teachers.lgd_reference import reference_teacher

    adapter = model._adapter
    with torch.no_grad():
        images, gt = adapter.preprocess(model.student, batch)
        student = adapter.run(model.student, images, gt, with_head=False)
    student.features = {k: v.detach().requires_grad_() for k, v in student.features.items()}

    def vectorised():
        return model.teacher(batch, student).features

    def reference():
        return reference_teacher(model.teacher, student)

    fns = {"vectorised (lgdkd)": vectorised, "per-image loops (official structure)": reference}
    times = {k: [] for k in fns}
    for r in range(args.rounds + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.iters):
                maps = fn()
                sum(m.square().mean() for m in maps.values()).backward()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
            if r > 0:  # round 0 warms up
                times[name].append((time.perf_counter() - t0) / args.iters)
    base = statistics.median(times["per-image loops (official structure)"])
    n_boxes = sum(len(x["instances"]) for x in batch)
    print(f"\nLGD teacher alone ({n_boxes} boxes in the batch), forward + backward:\n")
    print("| teacher | s | x per-image loops |")
    print("|---|---|---|")
    for name in fns:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.4f} | {t / base:.2f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=list(CONFIGS), default="retinanet")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--with-teacher-baseline", action="store_true")
    args = p.parse_args(argv)

    sys.path.insert(0, ROOT)
    import lgdkd.modeling  # noqa: F401

    cdir = os.path.join(ROOT, "configs", "LGD", "DeepForest")
    plain_cfg = load_cfg(os.path.join(cdir, CONFIGS[args.family][0]), args.device)
    lgd_cfg = load_cfg(os.path.join(cdir, CONFIGS[args.family][1]), args.device)
    start = lgd_cfg.MODEL.DISTILL.SCHEDULE.START_ITER  # distillation on, backbone free
    runs = {"plain student": build(plain_cfg), "LGD": build(lgd_cfg)}
    tmp = tempfile.mkdtemp()
    if args.with_teacher_baseline:
        if args.family != "retinanet":
            raise SystemExit("--with-teacher-baseline is defined for --family retinanet")
        fit_cfg = load_cfg(
            os.path.join(cdir, CONFIGS[args.family][0]),
            args.device,
            random_teacher(tmp, plain_cfg, args.device),
        )
        runs["FitNet (EffLite2 teacher)"] = build(fit_cfg)
    batch = fixed_batch(plain_cfg, args.batch)
    size = tuple(batch[0]["image"].shape[-2:])
    times = time_rounds(runs, batch, start, args)
    base = statistics.median(times["plain student"])
    print_table(f"{args.family}, batch {args.batch} x {size[0]}x{size[1]}", runs, times, args)
    teacher_table(runs["LGD"][0], batch, args)
    if "FitNet (EffLite2 teacher)" in runs:
        lgd = statistics.median(times["LGD"]) - base
        fit = statistics.median(times["FitNet (EffLite2 teacher)"]) - base
        print(f"\nLGD's extra cost / FitNet's extra cost: {lgd / fit:.2f}")


if __name__ == "__main__":
    main()
