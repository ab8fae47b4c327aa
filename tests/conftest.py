"""Shared fixtures: a generated toy COCO set and tiny CPU detectors that train in seconds.

Fixtures (see each docstring):

* ``toy_datasets`` (session): "toy_train" (8 images) and "toy_val" (4 images), registered.
* ``tiny_cfg`` (function): factory of small RetinaNet / Faster R-CNN / FCOS configs on them.
* ``run_train_net`` (function): runs train_net.py in a subprocess and returns its output.

The whole session uses 2 torch threads (the CI machines have 2 cores) and hides the
``torch.jit`` / ``torch.meshgrid`` deprecation warnings that detectron2 v0.6 triggers.
"""

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from typing import List

import pytest

_QUIET = (  # (message regex, category): noise from torch about detectron2 v0.6's code
    (r"`torch\.jit\.\w+` is deprecated", FutureWarning),
    (r"torch\.meshgrid", UserWarning),
)
for _message, _category in _QUIET:
    warnings.filterwarnings("ignore", message=_message, category=_category)

import torch  # noqa: E402

import lgdkd  # noqa: E402, F401  (compat hook before detectron2)
from lgdkd.config import get_cfg  # noqa: E402
from lgdkd.data import register_coco_format  # noqa: E402
from lgdkd.data.toy import make_toy_coco  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_THREADS = 2

torch.set_num_threads(TORCH_THREADS)


def pytest_configure(config):
    for message, category in _QUIET:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


@dataclass(frozen=True)
class ToyDatasets:
    """Names and files of the registered toy sets.

    ``coco_format`` is the value of ``DATASETS.COCO_FORMAT`` that registers the same sets
    in another process (e.g. train_net.py in a subprocess).
    """

    train: str
    val: str
    train_json: str
    train_images: str
    val_json: str
    val_images: str

    @property
    def coco_format(self) -> List[List[str]]:
        return [
            [self.train, self.train_json, self.train_images],
            [self.val, self.val_json, self.val_images],
        ]


@pytest.fixture(scope="session")
def toy_datasets(tmp_path_factory) -> ToyDatasets:
    """Generate the toy sets once per session and register them in this process.

    "toy_train": 8 images of 96x128 px (images 0 and 4 without objects, so 6 remain with
    DATALOADER.FILTER_EMPTY_ANNOTATIONS), "toy_val": 4 images; 2 classes (rectangle,
    ellipse). Registered through ``lgdkd.data.register_coco_format``, i.e. exactly as a
    DATASETS.COCO_FORMAT entry would be.
    """
    root = tmp_path_factory.mktemp("toy")
    train_json, train_images = make_toy_coco(str(root / "train"), num_images=8, seed=0)
    val_json, val_images = make_toy_coco(str(root / "val"), num_images=4, seed=1)
    data = ToyDatasets("toy_train", "toy_val", train_json, train_images, val_json, val_images)
    for name, json_file, image_root in data.coco_format:
        register_coco_format(name, json_file, image_root)
    return data


def _tiny_common(cfg, toy: ToyDatasets, output_dir: str):
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"  # from scratch: FrozenBN diverges
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 80, 96)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.DATASETS.COCO_FORMAT = toy.coco_format
    cfg.DATASETS.TRAIN = (toy.train,)
    cfg.DATASETS.TEST = (toy.val,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.SOLVER.LOG_PERIOD = 1
    cfg.TEST.EVAL_PERIOD = 0
    cfg.SEED = 0
    cfg.OUTPUT_DIR = output_dir


def _tiny_retinanet(cfg):
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.RETINANET.NUM_CLASSES = 2
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.001


def _tiny_faster_rcnn(cfg):
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.001
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7


def _tiny_fcos(cfg):
    cfg.MODEL.META_ARCHITECTURE = "FCOS"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FCOS.NUM_CONVS = 1
    # GroupNorm(32 groups) of the head needs > 1 value per group on the 1x1 maps of p7
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.FCOS.NUM_CLASSES = 2
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.001


def _tiny_gfl(cfg):
    cfg.MODEL.META_ARCHITECTURE = "GFL"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_p6p7_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.GFL.NUM_CONVS = 1
    cfg.MODEL.GFL.NORM = ""  # GroupNorm(32) on 32 channels leaves one channel per group
    cfg.MODEL.GFL.ANCHOR_SCALE = 4.0  # toy objects are 10-60 px
    cfg.MODEL.GFL.NUM_CLASSES = 2
    cfg.MODEL.GFL.SCORE_THRESH_TEST = 0.001


def _tiny_paa(cfg):
    cfg.MODEL.META_ARCHITECTURE = "PAA"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_p6p7_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.PAA.NUM_CONVS = 1
    cfg.MODEL.PAA.NORM = ""
    cfg.MODEL.PAA.ANCHOR_SCALE = 4.0
    cfg.MODEL.PAA.NUM_CLASSES = 2
    cfg.MODEL.PAA.SCORE_THRESH_TEST = 0.001


_ARCHS = {
    "retinanet": _tiny_retinanet,
    "faster_rcnn": _tiny_faster_rcnn,
    "fcos": _tiny_fcos,
    "gfl": _tiny_gfl,
    "paa": _tiny_paa,
}


@pytest.fixture
def tiny_cfg(toy_datasets, tmp_path):
    """Factory ``tiny_cfg(arch="retinanet") -> CfgNode`` (not frozen) of a tiny CPU detector.

    ``arch``: "retinanet", "faster_rcnn" (GeneralizedRCNN with reduced RPN/ROI sizes) or
    "fcos" (lgdkd's FCOS with its GN head: needs ``import lgdkd.modeling``) or "gfl" (GFocal V1
    without norm in its 1-conv towers, anchors of 4 x stride) or "paa" (PAA, the same
    simplifications). Every variant:
    ResNet-18 + FPN with 32 channels (64 for FCOS), from scratch with BN, inputs of 64-96 px
    (max 128), 2 images per batch, 6 iterations, evaluation only after the last one, test score
    threshold 0.001 (so that an untrained model predicts), SEED 0, NUM_WORKERS 0, toy_train /
    toy_val (also listed in DATASETS.COCO_FORMAT, so that a dumped config works in a
    subprocess), OUTPUT_DIR = ``tmp_path / "output"``.
    """

    def make(arch: str = "retinanet"):
        if arch not in _ARCHS:
            raise ValueError(f"tiny_cfg: arch must be one of {sorted(_ARCHS)}, got {arch!r}")
        cfg = get_cfg()
        _tiny_common(cfg, toy_datasets, str(tmp_path / "output"))
        _ARCHS[arch](cfg)
        return cfg

    return make


def toy_batch(cfg, n=4, start=0):
    """Training inputs of images ``start .. start + n`` of DATASETS.TRAIN[0], resized to a
    short side of 96 (max 128), in the config's INPUT.FORMAT (no random augmentation)."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T

    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(96, 128)],
        image_format=cfg.INPUT.FORMAT,
    )
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[start : start + n]]


@pytest.fixture
def run_train_net(tmp_path):
    """Run ``train_net.py *args`` in a subprocess (cwd ``tmp_path``); return its output.

    Fails the test with the end of the output when the exit code differs from
    ``expect_rc`` (keyword, default 0); ``timeout`` in seconds.
    """

    def run(*args, expect_rc=0, timeout=300):
        env = dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning")
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), *map(str, args)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != expect_rc:
            pytest.fail(
                f"train_net.py exited with {proc.returncode} (expected {expect_rc}):\n"
                + proc.stdout[-6000:]
            )
        return proc.stdout

    return run
