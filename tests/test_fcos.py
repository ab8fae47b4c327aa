"""FCOS built from yacs (lgdkd/modeling/meta_arch/fcos.py) against detectron2's LazyConfig FCOS.

* configs/Baselines/fcos_R_50_FPN_1x.yaml gives the same network (module types, parameter and
  buffer names and shapes, frozen stages, head initialisation, hyperparameters), the same solver
  and the same input pipeline as detectron2's model_zoo COCO-Detection/fcos_R_50_FPN_1x.py;
* a tiny variant (R-18, 32-channel FPN) trains one step on CPU, also on images without boxes,
  and returns ``Instances`` at inference.
"""

import os

import detectron2
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import detection_utils
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_model
from detectron2.modeling.meta_arch.fcos import FCOS as DetectronFCOS
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import lgdkd.modeling.meta_arch.fcos as fcos_module  # registers FCOS and its backbone
from lgdkd.config import get_cfg

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY_CONFIG = os.path.join(
    os.path.dirname(detectron2.__file__),
    "model_zoo",
    "configs",
    "COCO-Detection",
    "fcos_R_50_FPN_1x.py",
)
LOSS_KEYS = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}


def _yaml_cfg(name):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", name))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def lazy():
    if not os.path.exists(LAZY_CONFIG):
        pytest.skip(f"detectron2's model_zoo configs are not installed ({LAZY_CONFIG})")
    return LazyConfig.load(LAZY_CONFIG)


def test_registered():
    assert META_ARCH_REGISTRY.get("FCOS") is fcos_module.FCOS
    assert issubclass(fcos_module.FCOS, DetectronFCOS)
    assert BACKBONE_REGISTRY.get("build_fcos_resnet_fpn_backbone") is (
        fcos_module.build_fcos_resnet_fpn_backbone
    )


def test_yacs_model_equals_lazyconfig_model(lazy):
    torch.manual_seed(0)
    ours = build_model(_yaml_cfg("Baselines/fcos_R_50_FPN_1x.yaml"))
    theirs = instantiate(lazy.model)
    assert type(ours) is fcos_module.FCOS

    def structure(model):
        return {name: type(m).__name__ for name, m in model.named_modules() if name}

    ours_modules, theirs_modules = structure(ours), structure(theirs)
    assert ours_modules == theirs_modules
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert {k: v.shape for k, v in ours_state.items()} == {
        k: v.shape for k, v in theirs_state.items()
    }
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == {
        n: p.requires_grad for n, p in theirs.named_parameters()
    }  # frozen stem and res2 (freeze_at=2), FrozenBN everywhere in the ResNet
    # P6 reads P5 (FPN width), not C5
    assert ours.backbone.top_block.in_feature == "p5"
    assert ours.backbone.top_block.p6.in_channels == 256
    # constant initialisations: classification prior, centerness, pixel statistics
    for key in ("head.cls_score.bias", "head.bbox_pred.bias", "head.ctrness.bias"):
        torch.testing.assert_close(ours_state[key], theirs_state[key], rtol=0, atol=0)
    torch.testing.assert_close(ours.pixel_mean, theirs.pixel_mean, rtol=0, atol=0)
    torch.testing.assert_close(ours.pixel_std, theirs.pixel_std, rtol=0, atol=0)
    norms = [m for n, m in ours.head.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 8 and all(m.num_groups == 32 for m in norms)
    for attr in (
        "num_classes",
        "head_in_features",
        "center_sampling_radius",
        "focal_loss_alpha",
        "focal_loss_gamma",
        "test_score_thresh",
        "test_topk_candidates",
        "test_nms_thresh",
        "max_detections_per_image",
    ):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert type(ours.box2box_transform) is type(theirs.box2box_transform)
    assert ours.box2box_transform.normalize_by_size == theirs.box2box_transform.normalize_by_size
    assert ours.backbone.size_divisibility == theirs.backbone.size_divisibility


def test_yacs_solver_and_data_equal_lazyconfig(lazy):
    cfg = _yaml_cfg("Baselines/fcos_R_50_FPN_1x.yaml")
    s = cfg.SOLVER
    assert lazy.optimizer.lr == s.BASE_LR
    assert lazy.optimizer.momentum == s.MOMENTUM and not s.NESTEROV
    assert lazy.optimizer.weight_decay == s.WEIGHT_DECAY and s.WEIGHT_DECAY_BIAS is None
    assert lazy.optimizer.params.weight_decay_norm == s.WEIGHT_DECAY_NORM
    assert s.BIAS_LR_FACTOR == 1.0 and not s.CLIP_GRADIENTS.ENABLED and not s.AMP.ENABLED
    sched = lazy.lr_multiplier
    assert sched.scheduler.milestones == list(s.STEPS) + [s.MAX_ITER]
    assert sched.scheduler["values"] == pytest.approx([1.0, s.GAMMA, s.GAMMA**2])
    assert sched.warmup_length * s.MAX_ITER == pytest.approx(s.WARMUP_ITERS)
    assert sched.warmup_factor == s.WARMUP_FACTOR and sched.warmup_method == s.WARMUP_METHOD
    assert lazy.train.max_iter == s.MAX_ITER
    assert lazy.train.checkpointer.period == s.CHECKPOINT_PERIOD
    assert lazy.train.eval_period == cfg.TEST.EVAL_PERIOD
    assert lazy.train.init_checkpoint == cfg.MODEL.WEIGHTS
    assert lazy.model.backbone.bottom_up.freeze_at == cfg.MODEL.BACKBONE.FREEZE_AT

    train, test = lazy.dataloader.train, lazy.dataloader.test
    assert train.total_batch_size == s.IMS_PER_BATCH
    assert train.num_workers == cfg.DATALOADER.NUM_WORKERS
    assert (train.dataset.names,) == cfg.DATASETS.TRAIN
    assert (test.dataset.names,) == cfg.DATASETS.TEST
    assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS  # get_detection_dataset_dicts' default
    assert train.mapper.image_format == cfg.INPUT.FORMAT
    assert train.mapper.use_instance_mask == cfg.MODEL.MASK_ON

    def described(augmentations):
        """Type and attributes; a single edge length makes the sampling style irrelevant
        (yacs' test resize says "choice" of (800, 800), the LazyConfig "range" of the same)."""
        out = []
        for a in augmentations:
            attrs = dict(vars(a))
            if len(set(attrs.get("short_edge_length", ()))) == 1:
                attrs.pop("sample_style"), attrs.pop("is_range")
            out.append((type(a).__name__, attrs))
        return out

    for mapper, is_train in ((train.mapper, True), (test.mapper, False)):
        expected = described(instantiate(mapper.augmentations))
        assert described(detection_utils.build_augmentation(cfg, is_train)) == expected


@pytest.fixture
def tiny_cfg():
    """Base-FCOS.yaml with an R-18 (trainable BN) and a 32-channel FPN and head."""
    cfg = _yaml_cfg("Base-FCOS.yaml")
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FCOS.NUM_CONVS = 2
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    return cfg


def _inputs(with_boxes=(True, False), size=(128, 160)):
    """Images (3, H, W) in [0, 255]; boxes chosen to be positives on P3 and P4."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for has_boxes in with_boxes:
        inst = Instances(size)
        if has_boxes:
            inst.gt_boxes = Boxes(
                torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 150.0, 120.0]])
            )
            inst.gt_classes = torch.tensor([0, 2])
        else:
            inst.gt_boxes = Boxes(torch.zeros(0, 4))
            inst.gt_classes = torch.zeros(0, dtype=torch.int64)
        image = torch.rand(3, *size, generator=g) * 255
        batch.append({"image": image, "instances": inst, "height": size[0], "width": size[1]})
    return batch


def _train_step(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == LOSS_KEYS
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
    model.zero_grad()
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    return losses


def test_tiny_training_step_with_an_image_without_boxes(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    assert model.num_classes == 3 and model.head.cls_score.out_channels == 3
    assert model.head.cls_subnet[0].in_channels == 32 and len(model.head.cls_subnet) == 2 * 3
    losses = _train_step(model, _inputs((True, False)))
    assert losses["loss_fcos_loc"] > 0 and losses["loss_fcos_ctr"] > 0
    assert model.head.cls_score.weight.grad.abs().sum() > 0
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


def test_tiny_training_step_without_any_box(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    losses = _train_step(model, _inputs((False, False)))
    assert losses["loss_fcos_cls"] > 0
    assert losses["loss_fcos_loc"] == 0 and losses["loss_fcos_ctr"] == 0


def test_matching_of_mixed_batch_equals_detectron2_per_image(tiny_cfg):
    """Images with boxes are matched exactly as detectron2 does; empty ones are background."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    batch = _inputs((False, True, False))
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    anchors = model.anchor_generator([features[f] for f in model.head_in_features])
    gts = [x["instances"] for x in batch]
    matched = model.match_anchors(anchors, gts)
    expected = DetectronFCOS.match_anchors(model, anchors, [gts[1]])[0]
    assert torch.equal(matched[1], expected) and (expected >= 0).sum() > 0
    assert (matched[0] == -1).all() and (matched[2] == -1).all()
    labels, boxes = model.label_anchors(anchors, gts)
    assert (labels[0] == 3).all() and set(labels[1].unique().tolist()) == {0, 2, 3}
    ctr = model.compute_ctrness_targets(anchors, boxes)
    assert torch.isfinite(ctr[0]).all()


def test_tiny_inference_returns_instances(tiny_cfg):
    tiny_cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0
    tiny_cfg.TEST.DETECTIONS_PER_IMAGE = 7
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():  # every location predicts a valid 2x2-stride box around itself
        model.head.bbox_pred.weight.zero_()
        model.head.bbox_pred.bias.fill_(1.0)
    batch = _inputs((True, False))
    batch[1]["height"], batch[1]["width"] = 256, 320  # results are rescaled to this size
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == 2
    for out, size in zip(outputs, [(128, 160), (256, 320)]):
        r = out["instances"]
        assert isinstance(r, Instances) and r.image_size == size
        assert len(r) == 7  # threshold 0: capped by TEST.DETECTIONS_PER_IMAGE
        assert set(r.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert r.pred_classes.min() >= 0 and r.pred_classes.max() < 3
        assert ((r.scores >= 0) & (r.scores <= 1)).all()
        assert (r.scores[:-1] >= r.scores[1:]).all()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.FCOS.IN_FEATURES", ["p3", "p8"], "not outputs of the backbone"),
        ("MODEL.FCOS.NUM_CONVS", 0, "NUM_CONVS must be >= 1"),
    ],
)
def test_config_errors(tiny_cfg, key, value, message):
    tiny_cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        build_model(tiny_cfg)
