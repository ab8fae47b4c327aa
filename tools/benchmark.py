"""Training cost of each method next to its plain student, measured side by side in one process
on one fixed batch of DeepForest training tiles (the kits' DeepForest configs).

    python tools/benchmark.py lgd                           # RetinaNet + LGD, CPU
    python tools/benchmark.py lgd --family faster_rcnn --rounds 3
    python tools/benchmark.py lgd --with-teacher-baseline   # + FitNet (EffLite2 teacher)
    python tools/benchmark.py ld                            # GFocal: main LD, + VLR, + KD
    python tools/benchmark.py lad                           # PAA: LAD, SoLAD, CoLAD
    python tools/benchmark.py head                          # RetinaNet: Assist, HEAD, TF-HEAD
    python tools/benchmark.py head --device cuda --rounds 5

One "iteration" = forward (student, teacher and whatever the method adds), backward and SGD
step of the whole training model. The models take turns for --rounds rounds of --iters
iterations each, after one warm-up step each, so that machine noise hits them alike; the table
reports the median s/iter of each, its ratio to the plain student and the extra s/iter. Frozen
teachers have random weights (the cost does not depend on the values; LAD's assignment cost
grows a little with the number of candidates). Iterations start where every loss of the method
is on: LGD's distillation start, HEAD's warm-up end (60), else 0.

``lgd`` adds a second table: LGD's teacher alone (forward + backward of its maps, student
features fixed), lgdkd's vectorised teacher next to a per-image re-statement of the official
code's structure (tests/lgd_reference.py) with the same weights.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import lgdkd.modeling  # noqa: E402,F401  (registers lgdkd's models)
from lgdkd.config import get_cfg  # noqa: E402
from lgdkd.data import (  # noqa: E402
    CheckedDatasetMapper,
    apply_num_classes,
    register_datasets_from_cfg,
)
from lgdkd.engine import Trainer  # noqa: E402
from lgdkd.modeling.teachers.pretrained import build_teacher_config  # noqa: E402

FITNET_TEACHER = os.path.join(ROOT, "configs", "Backbones", "retinanet_EffLite2_FPN_1x.yaml")
PLAIN = "plain student"


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------
def load_cfg(path, device, opts=()):
    """``path`` with ``opts`` on ``device``, its data sets registered and classes set."""
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = device
    register_datasets_from_cfg(cfg)
    apply_num_classes(cfg)
    return cfg


def fixed_batch(cfg, n):
    """The first ``n`` training images of ``cfg`` through the training mapper (seeded)."""
    mapper = CheckedDatasetMapper(cfg, True)
    torch.manual_seed(0)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:n]]


def random_teacher_weights(tmp, cfg):
    """A weights file for the teacher that ``cfg`` names, with random values."""
    torch.manual_seed(1)
    path = os.path.join(tmp, "teacher.pth")
    torch.save({"model": build_model(build_teacher_config(cfg)).state_dict()}, path)
    return path


def fitnet_teacher_opts(tmp, student, device):
    """Options that turn ``student`` (a RetinaNet config) into FitNet from an
    EfficientNet-Lite2 RetinaNet teacher with random weights."""
    tcfg = load_cfg(
        FITNET_TEACHER,
        device,
        [
            "MODEL.RETINANET.NUM_CLASSES",
            str(student.MODEL.RETINANET.NUM_CLASSES),
            "MODEL.FPN.OUT_CHANNELS",
            str(student.MODEL.FPN.OUT_CHANNELS),
            "MODEL.TIMM.PRETRAINED",
            "",
            "DATASETS.TRAIN",
            str(tuple(student.DATASETS.TRAIN)),
            "DATASETS.TEST",
            str(tuple(student.DATASETS.TEST)),
        ],
    )
    cfg_path, w_path = os.path.join(tmp, "fitnet_teacher.yaml"), os.path.join(tmp, "fitnet.pth")
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
    """(model in training mode, its optimizer), weights seeded."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model, Trainer.build_optimizer(cfg, model)


def step(model, optimizer, batch, iteration, device):
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
    """Markdown table of the median s/iter of each run next to the plain student's."""
    base = statistics.median(times[PLAIN])
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


# --------------------------------------------------------------------------------------------
# The methods: (title, {name: config path and options}, first iteration)
# --------------------------------------------------------------------------------------------
def _configs(kit):
    return os.path.join(ROOT, "configs", kit, "DeepForest")


def arms_lgd(args, tmp):
    family = {
        "retinanet": ("retinanet_EffLite0.yaml", "retinanet_EffLite0_lgd.yaml"),
        "faster_rcnn": ("faster_rcnn_EffLite0.yaml", "faster_rcnn_EffLite0_lgd.yaml"),
    }[args.family]
    plain, lgd = (os.path.join(_configs("LGD"), c) for c in family)
    lgd_cfg = load_cfg(lgd, args.device)
    arms = {PLAIN: load_cfg(plain, args.device), "LGD": lgd_cfg}
    if args.with_teacher_baseline:
        if args.family != "retinanet":
            raise SystemExit("--with-teacher-baseline is defined for --family retinanet")
        opts = fitnet_teacher_opts(tmp, arms[PLAIN], args.device)
        arms["FitNet (EffLite2 teacher)"] = load_cfg(plain, args.device, opts)
    # distillation on, backbone free
    return args.family, arms, lgd_cfg.MODEL.DISTILL.SCHEDULE.START_ITER


def arms_ld(args, tmp):
    folder = _configs("LD")
    ld = os.path.join(folder, "gfl_EffLite0_ld.yaml")
    teacher = ["MODEL.DISTILL.TEACHER.WEIGHTS", random_teacher_weights(tmp, load_cfg(ld, "cpu"))]
    main_only = ["MODEL.DISTILL.LD.KD_WEIGHT", "0.0", "MODEL.DISTILL.LD.VLR_WEIGHT", "0.0"]
    arms = {
        PLAIN: load_cfg(os.path.join(folder, "gfl_EffLite0.yaml"), args.device),
        "LD, main region": load_cfg(ld, args.device, teacher + main_only),
        "LD, main + VLR": load_cfg(ld, args.device, teacher),
        "LD, main + VLR + KD": load_cfg(
            os.path.join(folder, "gfl_EffLite0_ld_kd.yaml"), args.device, teacher
        ),
    }
    return "GFocal EffLite0 (DeepForest)", arms, 0


def arms_lad(args, tmp):
    folder = _configs("LAD")
    lad = os.path.join(folder, "paa_EffLite0_lad.yaml")
    teacher = ["MODEL.DISTILL.TEACHER.WEIGHTS", random_teacher_weights(tmp, load_cfg(lad, "cpu"))]
    arms = {
        PLAIN: load_cfg(os.path.join(folder, "paa_EffLite0.yaml"), args.device),
        "LAD": load_cfg(lad, args.device, teacher),
        "SoLAD": load_cfg(os.path.join(folder, "paa_EffLite0_solad.yaml"), args.device, teacher),
        "CoLAD (two networks)": load_cfg(
            os.path.join(folder, "paa_EffLite0_colad.yaml"), args.device
        ),
    }
    return "PAA EffLite0 (DeepForest)", arms, 0


def arms_head(args, tmp):
    folder = _configs("HEAD")
    head = os.path.join(folder, "retinanet_EffLite0_head.yaml")
    teacher = ["MODEL.DISTILL.TEACHER.WEIGHTS", random_teacher_weights(tmp, load_cfg(head, "cpu"))]
    arms = {
        PLAIN: load_cfg(os.path.join(folder, "retinanet_EffLite0.yaml"), args.device),
        "Assist": load_cfg(os.path.join(folder, "retinanet_EffLite0_assist.yaml"), args.device),
        "HEAD (Assist + AKD + CKD)": load_cfg(head, args.device, teacher),
        "TF-HEAD": load_cfg(os.path.join(folder, "retinanet_EffLite0_tfhead.yaml"), args.device),
    }
    return "RetinaNet EffLite0 (DeepForest)", arms, 60  # after the KD warm-up: every loss on


METHODS = {"lgd": arms_lgd, "ld": arms_ld, "lad": arms_lad, "head": arms_head}


def lgd_teacher_table(model, batch, args):
    """Median s per forward + backward of LGD's vectorised teacher and of the per-image
    reference (tests/lgd_reference.py) with the same weights."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from lgd_reference import reference_teacher

    adapter = model._adapter
    with torch.no_grad():
        images, gt = adapter.preprocess(model.student, batch)
        student = adapter.run(model.student, images, gt, with_head=False)
    student.features = {k: v.detach().requires_grad_() for k, v in student.features.items()}
    fns = {
        "vectorised (lgdkd)": lambda: model.teacher(batch, student).features,
        "per-image loops (official structure)": lambda: reference_teacher(model.teacher, student),
    }
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
    p.add_argument("method", choices=list(METHODS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument(
        "--start", type=int, default=None, help="first iteration (default: the method's)"
    )
    p.add_argument(
        "--family",
        choices=["retinanet", "faster_rcnn"],
        default="retinanet",
        help="lgd: the detector",
    )
    p.add_argument(
        "--with-teacher-baseline",
        action="store_true",
        help="lgd: add FitNet from an EfficientNet-Lite2 teacher (random weights)",
    )
    args = p.parse_args(argv)

    os.chdir(ROOT)  # configs name their teacher configs relative to the repository root
    tmp = tempfile.mkdtemp()
    title, cfgs, start = METHODS[args.method](args, tmp)
    start = start if args.start is None else args.start
    runs = {name: build(cfg) for name, cfg in cfgs.items()}
    batch = fixed_batch(cfgs[PLAIN], args.batch)
    size = tuple(batch[0]["image"].shape[-2:])
    times = time_rounds(runs, batch, start, args)
    print_table(f"{title}, batch {args.batch} x {size[0]}x{size[1]}", runs, times, args)
    if args.method == "lgd":
        lgd_teacher_table(runs["LGD"][0], batch, args)
        if "FitNet (EffLite2 teacher)" in runs:
            base = statistics.median(times[PLAIN])
            lgd = statistics.median(times["LGD"]) - base
            fit = statistics.median(times["FitNet (EffLite2 teacher)"]) - base
            print(f"\nLGD's extra cost / FitNet's extra cost: {lgd / fit:.2f}")
    return times


if __name__ == "__main__":
    main()
