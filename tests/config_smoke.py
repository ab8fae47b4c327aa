"""Run a shipped config as a user would, on stand-ins for what this machine lacks.

For one config file this does what ``python train_net.py --config-file CONFIG`` does (``setup``,
``Trainer``, ``resume_or_load``, ``train`` with its final evaluation), with command-line
options that only shrink the run:

* **data**: the config's own data sets when they are on this machine (DeepForest, the toy
  sets); otherwise a small generated set with the same class count and class names (COCO's 80,
  VOC's 20 with a VOC-layout test split, so VOC's evaluator runs);
* **weights**: every file the config names, replaced by a stand-in with the same key names
  and shapes: detectron2's MSRA / FAIR ImageNet ``.pkl`` (Caffe2 names, loaded through
  detectron2's name matching), torchvision ResNets converted with
  ``pretrained_backbones/convert_torchvision_resnet.py``, timm checkpoints, and teacher /
  student-initialisation checkpoints of the architecture the named config builds (random
  values: only the loading path is under test);
* **size**: 2 iterations of 2 images at a short side of 64-80 px; distillation schedules that
  start later start at iteration 1, and backbone freezing lasts 1 iteration, so both the
  frozen and the distilling phase run.

Used by tests/test_configs.py; also a command::

    python tests/config_smoke.py configs/LD/COCO/ld_R_18_from_R_101_1x.yaml [...]
"""

import argparse
import json
import os
import pickle
import re
import sys
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES  # noqa: E402
from detectron2.data.datasets.pascal_voc import register_pascal_voc  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone.resnet import build_resnet_backbone  # noqa: E402

import lgdkd.modeling  # noqa: E402,F401
from lgdkd.config import get_cfg  # noqa: E402
from lgdkd.data import apply_num_classes, register_datasets_from_cfg  # noqa: E402
from lgdkd.engine import Trainer, load_config, setup  # noqa: E402
from lgdkd.engine.checkpointer import load_initial_weights  # noqa: E402
from lgdkd.modeling.distill.meta_arch import build_student  # noqa: E402
from lgdkd.modeling.teachers.pretrained import build_teacher_config  # noqa: E402

__all__ = ["SmokeRun", "StandIns", "calibrate_batch_norm", "run_config", "smoke_options"]

_AVAILABLE_PREFIXES = ("deepforest_", "lgdkd_toy_")
_MAX_ITER = 2


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _draw_set(root: str, class_names: List[str], num_images: int, seed: int):
    """Images with 2-3 filled boxes of random classes; annotations with polygons (Mask R-CNN
    configs need segmentations). Returns (images, annotations) COCO records."""
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    h, w = 96, 128
    images, annotations = [], []
    for i in range(num_images):
        img = rng.randint(0, 60, size=(h, w, 3)).astype(np.uint8)
        for _ in range(2 + i % 2):
            bw, bh = rng.randint(16, 48), rng.randint(16, 40)
            x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
            color = tuple(int(c) for c in rng.randint(120, 255, size=3))
            cv2.rectangle(img, (x0, y0), (x0 + bw - 1, y0 + bh - 1), color, -1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(rng.randint(len(class_names))) + 1,
                    "bbox": [float(x0), float(y0), float(bw), float(bh)],
                    "area": float(bw * bh),
                    "iscrowd": 0,
                    "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]],
                }
            )
        name = f"{i:06d}.jpg"
        cv2.imwrite(os.path.join(root, "images", name), img)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    return images, annotations


def coco_standin(root: str, class_names: List[str], num_images: int, seed: int):
    """A COCO-format set under ``root``; returns (json path, image root)."""
    json_path = os.path.join(root, "annotations.json")
    if not os.path.isfile(json_path):
        images, annotations = _draw_set(root, class_names, num_images, seed)
        cats = [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]
        with open(json_path, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": cats}, f)
    return json_path, os.path.join(root, "images")


def voc_standin(root: str, name: str) -> str:
    """A VOC2007-layout test split with VOC's 20 classes, registered as ``name``."""
    if not os.path.isfile(os.path.join(root, "ImageSets", "Main", "test.txt")):
        images, annotations = _draw_set(os.path.join(root, "tmp"), list(VOC_CLASSES), 2, 11)
        for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        ids = []
        for im in images:
            stem = os.path.splitext(im["file_name"])[0]
            ids.append(stem)
            os.replace(
                os.path.join(root, "tmp", "images", im["file_name"]),
                os.path.join(root, "JPEGImages", stem + ".jpg"),
            )
            objects = "".join(
                f"<object><name>{VOC_CLASSES[a['category_id'] - 1]}</name><pose>Unspecified"
                f"</pose><truncated>0</truncated><difficult>0</difficult><bndbox>"
                f"<xmin>{a['bbox'][0] + 1:.0f}</xmin><ymin>{a['bbox'][1] + 1:.0f}</ymin>"
                f"<xmax>{a['bbox'][0] + a['bbox'][2]:.0f}</xmax>"
                f"<ymax>{a['bbox'][1] + a['bbox'][3]:.0f}</ymax></bndbox></object>"
                for a in annotations
                if a["image_id"] == im["id"]
            )
            with open(os.path.join(root, "Annotations", stem + ".xml"), "w") as f:
                f.write(
                    f"<annotation><filename>{stem}.jpg</filename><size><width>{im['width']}"
                    f"</width><height>{im['height']}</height><depth>3</depth></size>"
                    f"{objects}</annotation>"
                )
        with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    if name not in DatasetCatalog.list():
        register_pascal_voc(name, root, "test", 2007)
    return name


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def _c2_name(key: str) -> str:
    """detectron2 ResNet key -> the Caffe2 (MSRA / FAIR ImageNet) blob name it is matched from
    (the inverse of detectron2's ``convert_basic_c2_names``)."""
    if key.startswith("stem.conv1.norm."):
        return "res_conv1_bn_" + {"weight": "s", "bias": "b"}[key.rsplit(".", 1)[1]]
    if key == "stem.conv1.weight":
        return "conv1_w"
    m = re.fullmatch(r"(res\d)\.(\d+)\.(conv[123]|shortcut)(\.norm)?\.(weight|bias)", key)
    if m is None:
        raise KeyError(key)
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}.get(
        m.group(3), "branch1"
    )
    suffix = ("_bn_" + {"weight": "s", "bias": "b"}[m.group(5)]) if m.group(4) else "_w"
    return f"{m.group(1)}_{m.group(2)}_{branch}{suffix}"


_TORCHVISION = {
    "R-18": ("resnet18", None),
    "R-34": ("resnet34", None),
    "R-50": ("resnet50", None),
    "R-101": ("resnet101", None),
    "X-101-32x4d": (None, dict(layers=[3, 4, 23, 3], groups=32, width_per_group=4)),
}


@torch.no_grad()
def calibrate_batch_norm(model: torch.nn.Module, inputs: torch.Tensor) -> torch.nn.Module:
    """Set every BatchNorm's running statistics to those of ``inputs`` (one forward in training
    mode with cumulative averages), as a trained network's are: random convolutions with unit
    statistics let activations grow layer after layer until a deep ResNet overflows."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(inputs)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def _pixels(cfg, n=4, size=64, seed=0):
    """Random images normalised as the config normalises its inputs, (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 255
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class StandIns:
    """Stand-in files, made once per (kind, architecture) under ``root``."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self._made: Dict[tuple, str] = {}

    def _path(self, name):
        return os.path.join(self.root, re.sub(r"[^A-Za-z0-9_.-]+", "_", name))

    def caffe2_imagenet(self, cfg, weights: str) -> str:
        """detectron2://ImageNetPretrained/{MSRA,FAIR}/*.pkl: Caffe2 blob names of the config's
        ResNet (no running statistics, with the ImageNet classifier), as those files have; the
        BatchNorms are folded into scale and bias (``_bn_s``, ``_bn_b``) after calibration on
        images normalised as the config does."""
        r = cfg.MODEL.RESNETS
        key = ("c2", weights, r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.RES2_OUT_CHANNELS)
        if key not in self._made:
            c = cfg.clone()
            c.defrost()
            c.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False] * 4
            c.MODEL.RESNETS.NORM = "BN"
            c.MODEL.BACKBONE.FREEZE_AT = 0
            c.MODEL.RESNETS.OUT_FEATURES = ["res5"]
            from detectron2.layers import ShapeSpec

            torch.manual_seed(0)
            net = calibrate_batch_norm(build_resnet_backbone(c, ShapeSpec(channels=3)), _pixels(c))
            blobs = {}
            for name, module in net.named_modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    scale = module.weight / (module.running_var + module.eps).sqrt()
                    blobs[_c2_name(name + ".weight")] = scale.detach().numpy()
                    bias = module.bias - module.running_mean * scale
                    blobs[_c2_name(name + ".bias")] = bias.detach().numpy()
                elif isinstance(module, torch.nn.Conv2d):
                    blobs[_c2_name(name + ".weight")] = module.weight.detach().numpy()
            blobs["fc1000_w"] = np.zeros((1000, 2048), np.float32)
            blobs["fc1000_b"] = np.zeros((1000,), np.float32)
            path = self._path(f"{'_'.join(map(str, key))}.pkl")
            with open(path, "wb") as f:
                pickle.dump(blobs, f)
            self._made[key] = path
        return self._made[key]

    def torchvision_resnet(self, weights: str) -> str:
        """pretrained_backbones/<arch>-torchvision.pkl, made as a user makes it: a torchvision
        ResNet state dict converted by pretrained_backbones/convert_torchvision_resnet.py."""
        arch = os.path.basename(weights).replace("-torchvision.pkl", "")
        key = ("tv", arch)
        if key not in self._made:
            import importlib.util

            import torchvision
            from torchvision.models.resnet import Bottleneck, ResNet

            name, custom = _TORCHVISION[arch]
            torch.manual_seed(0)
            if name is not None:
                net = getattr(torchvision.models, name)(weights=None)
            else:
                net = ResNet(Bottleneck, **custom)
            imagenet = get_cfg()
            imagenet.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
            imagenet.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
            calibrate_batch_norm(net, _pixels(imagenet))
            src = self._path(f"{arch}-torchvision-src.pth")
            torch.save(net.state_dict(), src)
            spec = importlib.util.spec_from_file_location(
                "convert_torchvision_resnet",
                os.path.join(REPO_ROOT, "pretrained_backbones", "convert_torchvision_resnet.py"),
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            dst = self._path(f"{arch}-torchvision.pkl")
            module.main([src, dst])
            self._made[key] = dst
        return self._made[key]

    def timm_checkpoint(self, timm_name: str) -> str:
        """A timm-format checkpoint of ``timm_name`` (classifier included)."""
        key = ("timm", timm_name)
        if key not in self._made:
            import timm

            torch.manual_seed(0)
            path = self._path(f"{timm_name}-timm.pth")
            torch.save(timm.create_model(timm_name, pretrained=False).state_dict(), path)
            self._made[key] = path
        return self._made[key]

    def teacher(self, cfg) -> str:
        """A checkpoint of the teacher the config names (its config + OPTS, the class count of
        its own data), in the layout its training run writes: a distillation checkpoint
        (``student.*``) when the teacher config is itself a distillation config."""
        t = cfg.MODEL.DISTILL.TEACHER
        key = ("teacher", t.CONFIG_FILE, tuple(t.OPTS))
        if key not in self._made:
            tcfg = build_teacher_config(cfg)
            torch.manual_seed(1)
            model = build_model(tcfg)
            # a trained teacher starts from its ImageNet weights: a randomly initialised
            # FrozenBN ResNet would give features of ~1e6
            load_initial_weights(model, self.initial_weights(tcfg, tcfg.MODEL.WEIGHTS) or "")
            state = model.state_dict()
            own = get_cfg()
            own.merge_from_file(t.CONFIG_FILE)
            if own.MODEL.META_ARCHITECTURE == "DistillationDetector":
                state = {f"student.{k}": v for k, v in state.items()}
            path = self._path(f"teacher_{t.CONFIG_FILE}_{len(self._made)}.pth")
            torch.save({"model": state, "iteration": 0}, path)
            self._made[key] = path
        return self._made[key]

    def student_init(self, cfg) -> str:
        """MODEL.DISTILL.STUDENT_INIT_WEIGHTS: a trained student detector's checkpoint."""
        key = ("student_init", cfg.MODEL.DISTILL.STUDENT_INIT_WEIGHTS)
        if key not in self._made:
            torch.manual_seed(2)
            path = self._path(f"student_init_{len(self._made)}.pth")
            torch.save({"model": build_student(cfg).state_dict()}, path)
            self._made[key] = path
        return self._made[key]

    def initial_weights(self, cfg, weights: str) -> Optional[str]:
        """The stand-in for a MODEL.WEIGHTS value (None: nothing to replace)."""
        if not weights or os.path.isfile(weights):
            return None
        if weights.startswith("detectron2://ImageNetPretrained/"):
            return self.caffe2_imagenet(cfg, weights)
        if weights.endswith("-torchvision.pkl"):
            return self.torchvision_resnet(weights)
        raise ValueError(f"no stand-in known for MODEL.WEIGHTS {weights!r}")


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def _data_options(cfg, data_root: str) -> List[str]:
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if all(n.startswith(_AVAILABLE_PREFIXES) for n in names):
        return []
    is_voc = any(n.startswith("voc_") for n in names)
    if is_voc:
        classes = list(VOC_CLASSES)
    else:
        classes = list(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes)
    tag = f"standin_{len(classes)}"
    train_json, train_images = coco_standin(
        os.path.join(data_root, tag, "train"), classes, num_images=4, seed=0
    )
    entries = [[f"{tag}_train", train_json, train_images]]
    if is_voc:
        test = voc_standin(os.path.join(data_root, tag, "voc_test"), f"{tag}_voc_test")
    else:
        test_json, test_images = coco_standin(
            os.path.join(data_root, tag, "test"), classes, num_images=2, seed=1
        )
        test = f"{tag}_test"
        entries.append([test, test_json, test_images])
    return [
        "DATASETS.COCO_FORMAT",
        json.dumps(entries),
        "DATASETS.TRAIN",
        f"('{tag}_train',)",
        "DATASETS.TEST",
        f"('{test}',)",
    ]


def smoke_options(config_file: str, stand_ins: StandIns, data_root: str, output_dir: str):
    """The command-line options of the shrunk run of ``config_file``, and what they replace.

    Returns:
        (opts, replaced): ``replaced`` maps each key whose weights were stood in for to the
        (original, stand-in) paths.
    """
    cfg = load_config(argparse.Namespace(config_file=config_file, opts=[]))
    register_datasets_from_cfg(cfg, check=False)
    opts = _data_options(cfg, data_root)
    replaced = {}
    probe = cfg.clone()
    probe.merge_from_list(opts)
    if not torch.cuda.is_available():
        probe.MODEL.DEVICE = "cpu"
    register_datasets_from_cfg(probe, check=False)
    apply_num_classes(probe)

    def replace(key, value):
        replaced[key] = (probe_value(probe, key), value)
        opts.extend([key, value])

    standin = stand_ins.initial_weights(cfg, cfg.MODEL.WEIGHTS)
    if standin is not None:
        replace("MODEL.WEIGHTS", standin)
    pretrained = cfg.MODEL.TIMM.PRETRAINED
    if pretrained.startswith("pretrained_backbones/") and not os.path.isfile(pretrained):
        replace("MODEL.TIMM.PRETRAINED", stand_ins.timm_checkpoint(cfg.MODEL.TIMM.NAME))
    d = cfg.MODEL.DISTILL
    if d.TEACHER.NAME == "PretrainedTeacher" or (
        d.TEACHER.NAME == "CoLearningTeacher" and d.TEACHER.WEIGHTS
    ):
        replace("MODEL.DISTILL.TEACHER.WEIGHTS", stand_ins.teacher(probe))
    if d.TEACHER.NAME == "CoLearningTeacher" and not d.TEACHER.WEIGHTS:
        tcfg = get_cfg()
        tcfg.merge_from_file(d.TEACHER.CONFIG_FILE)
        tcfg.merge_from_list(list(d.TEACHER.OPTS))
        t_standin = stand_ins.initial_weights(tcfg, tcfg.MODEL.WEIGHTS)
        if t_standin is not None:
            value = str(list(d.TEACHER.OPTS) + ["MODEL.WEIGHTS", t_standin])
            replace("MODEL.DISTILL.TEACHER.OPTS", value)
    if d.STUDENT_INIT_WEIGHTS and not os.path.isfile(d.STUDENT_INIT_WEIGHTS):
        replace("MODEL.DISTILL.STUDENT_INIT_WEIGHTS", stand_ins.student_init(probe))

    s = d.SCHEDULE
    opts += [
        "INPUT.MIN_SIZE_TRAIN",
        "(64, 80)",
        "INPUT.MAX_SIZE_TRAIN",
        "128",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "128",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        str(_MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD",
        "100000",
        "SOLVER.LOG_PERIOD",
        "1",
        "TEST.EVAL_PERIOD",
        "0",
        "TEST.PRECISE_BN.NUM_ITER",
        "1",
        "DATALOADER.NUM_WORKERS",
        "0",
        "MODEL.DISTILL.SCHEDULE.START_ITER",
        str(min(s.START_ITER, 1)),
        "MODEL.DISTILL.SCHEDULE.FREEZE_BACKBONE_ITERS",
        str(min(s.FREEZE_BACKBONE_ITERS, 1)),
        "OUTPUT_DIR",
        output_dir,
    ]
    # an untrained head scores about its prior (0.01): a low threshold lets evaluation see boxes
    for key in (
        "MODEL.RETINANET.SCORE_THRESH_TEST",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "MODEL.FCOS.SCORE_THRESH_TEST",
        "MODEL.GFL.SCORE_THRESH_TEST",
        "MODEL.PAA.SCORE_THRESH_TEST",
    ):
        opts += [key, "0.001"]
    if 0 <= s.STOP_ITER <= _MAX_ITER:
        opts += ["MODEL.DISTILL.SCHEDULE.STOP_ITER", "-1"]
    return opts, replaced


def probe_value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


class SmokeRun:
    """What :func:`run_config` saw: the resolved config, the stand-ins used, the evaluation
    results, the metrics of each iteration and the model after training."""

    def __init__(self, cfg, replaced, results, metrics, model):
        self.cfg, self.replaced, self.results, self.metrics = cfg, replaced, results, metrics
        self.model = model


def run_config(config_file: str, stand_ins: StandIns, data_root: str, output_dir: str):
    """Train and evaluate ``config_file`` as train_net.py does, shrunk (module docstring)."""
    opts, replaced = smoke_options(config_file, stand_ins, data_root, output_dir)
    args = argparse.Namespace(
        config_file=config_file, opts=opts, resume=False, eval_only=False, num_gpus=1
    )
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    model = trainer.checkpointer.model
    _check_initial_weights(model, replaced)
    trainer.train()
    results = trainer._last_eval_results
    metrics = []
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        for line in f:
            metrics.append(json.loads(line))
    return SmokeRun(cfg, replaced, results, metrics, model)


def _check_initial_weights(model, replaced):
    """The stand-in MODEL.WEIGHTS reached the student's backbone (its stem conv)."""
    if "MODEL.WEIGHTS" not in replaced:
        return
    path = replaced["MODEL.WEIGHTS"][1]
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    state = data.get("model", data)
    stem = state.get("stem.conv1.weight", state.get("conv1_w"))
    student = getattr(model, "student", model)
    got = student.backbone.bottom_up.stem.conv1.weight.detach()
    if stem is None or not torch.equal(got, torch.as_tensor(stem)):
        raise AssertionError(f"MODEL.WEIGHTS stand-in {path} did not initialise the student")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--work-dir", default="output/config_smoke")
    args = parser.parse_args(argv)
    stand_ins = StandIns(os.path.join(args.work_dir, "stand_ins"))
    for i, path in enumerate(args.configs):
        out = os.path.join(args.work_dir, "runs", os.path.splitext(path)[0].replace("/", "_"))
        run = run_config(path, stand_ins, os.path.join(args.work_dir, "data"), out)
        print(f"OK {path}: {json.dumps(run.results)[:200]}")


if __name__ == "__main__":
    main()
