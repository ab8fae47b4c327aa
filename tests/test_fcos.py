"""FCOS built from yacs (lgdkd/modeling/detectors/fcos.py) against detectron2's LazyConfig FCOS.

* configs/Baselines/fcos_R_50_FPN_1x.yaml gives the same network (module types, parameter and
  buffer names and shapes, frozen stages, head initialisation, hyperparameters), the same solver
  and the same input pipeline as detectron2's model_zoo COCO-Detection/fcos_R_50_FPN_1x.py;
* a tiny variant (R-18, 32-channel FPN) trains one step on CPU, also on images without boxes,
  and returns ``Instances`` at inference;
* the official option set (MODEL.FCOS.SCALE_PER_LEVEL, BOX_LOSS_CENTERNESS_WEIGHTED,
  NORM_ACROSS_WORKERS, SIZE_RANGE_INCLUSIVE, FILTER_ON_CLS_PROB_TEST): each switch against a
  reference computed here, defaults bit-identical to detectron2's FCOS, batch invariance of the
  averaged normaliser (simulated workers and 2 gloo processes), training and evaluation on the
  toy set, and the loss path LGD's teacher uses.
"""

import math
import os

import detectron2
import pytest
import torch
import torch.distributed as dist
from conftest import toy_batch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import detection_utils
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_backbone, build_model
from detectron2.modeling.meta_arch.fcos import FCOS as DetectronFCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead as DetectronFCOSHead
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

import lgdkd.modeling.backbones as backbones  # registers the FCOS backbone
import lgdkd.modeling.detectors.fcos as fcos_module  # registers FCOS
from lgdkd.config import get_cfg
from lgdkd.engine import Trainer, launch
from lgdkd.modeling.distill.adapters import build_adapter
from lgdkd.modeling.distillers.head.teacher_free import _fcos_head_with_towers

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
        backbones.build_fcos_resnet_fpn_backbone
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
def small_cfg():
    """Base-FCOS.yaml with an R-18 (trainable BN) and a 32-channel FPN and head."""
    return _small_cfg()


def _small_cfg():
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


def test_tiny_training_step_with_an_image_without_boxes(small_cfg):
    torch.manual_seed(0)
    model = build_model(small_cfg)
    assert model.num_classes == 3 and model.head.cls_score.out_channels == 3
    assert model.head.cls_subnet[0].in_channels == 32 and len(model.head.cls_subnet) == 2 * 3
    losses = _train_step(model, _inputs((True, False)))
    assert losses["loss_fcos_loc"] > 0 and losses["loss_fcos_ctr"] > 0
    assert model.head.cls_score.weight.grad.abs().sum() > 0
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


def test_tiny_training_step_without_any_box(small_cfg):
    torch.manual_seed(0)
    model = build_model(small_cfg)
    losses = _train_step(model, _inputs((False, False)))
    assert losses["loss_fcos_cls"] > 0
    assert losses["loss_fcos_loc"] == 0 and losses["loss_fcos_ctr"] == 0


def test_matching_of_mixed_batch_equals_detectron2_per_image(small_cfg):
    """Images with boxes are matched exactly as detectron2 does; empty ones are background."""
    torch.manual_seed(0)
    model = build_model(small_cfg)
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


def test_tiny_inference_returns_instances(small_cfg):
    small_cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0
    small_cfg.TEST.DETECTIONS_PER_IMAGE = 7
    torch.manual_seed(0)
    model = build_model(small_cfg).eval()
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
def test_config_errors(small_cfg, key, value, message):
    small_cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        build_model(small_cfg)


# ------------------------------------------------------------------------------------------
# The official option set (cvpods' FCOS for LGD, MMDetection's FCOSHead for TF-HEAD)
# ------------------------------------------------------------------------------------------
OFFICIAL = (
    "SCALE_PER_LEVEL",
    "BOX_LOSS_CENTERNESS_WEIGHTED",
    "NORM_ACROSS_WORKERS",
    "SIZE_RANGE_INCLUSIVE",
    "FILTER_ON_CLS_PROB_TEST",
)


def _official(cfg, **overrides):
    """``cfg`` with every official switch on, except those given as ``KEY=False``."""
    for key in OFFICIAL:
        cfg.MODEL.FCOS[key] = overrides.get(key, True)
    return cfg


def test_official_keys_default_to_detectron2_and_lgd_configs_set_them():
    f = get_cfg().MODEL.FCOS
    assert all(f[key] is False for key in OFFICIAL)
    lgd_dir = os.path.join(REPO_ROOT, "configs", "LGD", "COCO")
    names = sorted(n for n in os.listdir(lgd_dir) if n.startswith("fcos_"))
    assert len(names) == 10  # baselines and LGD rows
    for name in names:
        lgd = _yaml_cfg(os.path.join("LGD", "COCO", name)).MODEL.FCOS
        assert all(lgd[key] is True for key in OFFICIAL), name
        assert lgd.SCORE_THRESH_TEST == 0.05 and lgd.NMS_THRESH_TEST == 0.6
        assert lgd.TOPK_CANDIDATES_TEST == 1000 and lgd.CENTER_SAMPLING_RADIUS == 1.5


def test_defaults_are_detectron2_fcos_bit_for_bit(small_cfg):
    """Options off: detectron2's FCOS with detectron2's FCOSHead has exactly our state-dict
    keys, loads our weights strictly and gives the same losses and detections."""
    small_cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.05  # an untrained model predicts
    torch.manual_seed(0)
    ours = build_model(small_cfg)
    assert ours.head.scales is None
    f = small_cfg.MODEL.FCOS
    backbone = build_backbone(small_cfg)
    theirs = DetectronFCOS(
        backbone=backbone,
        head=DetectronFCOSHead(
            input_shape=[backbone.output_shape()[k] for k in f.IN_FEATURES],
            conv_dims=[32] * f.NUM_CONVS,
            num_classes=f.NUM_CLASSES,
            norm=f.HEAD_NORM,
            prior_prob=f.PRIOR_PROB,
        ),
        head_in_features=list(f.IN_FEATURES),
        num_classes=f.NUM_CLASSES,
        center_sampling_radius=f.CENTER_SAMPLING_RADIUS,
        focal_loss_alpha=f.FOCAL_LOSS_ALPHA,
        focal_loss_gamma=f.FOCAL_LOSS_GAMMA,
        test_score_thresh=f.SCORE_THRESH_TEST,
        test_topk_candidates=f.TOPK_CANDIDATES_TEST,
        test_nms_thresh=f.NMS_THRESH_TEST,
        max_detections_per_image=small_cfg.TEST.DETECTIONS_PER_IMAGE,
        pixel_mean=small_cfg.MODEL.PIXEL_MEAN,
        pixel_std=small_cfg.MODEL.PIXEL_STD,
    )
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())  # strict
    batch = _inputs((True, True))  # v0.6's own matching fails on an image without boxes
    for _ in range(2):  # the second step uses the updated EMA normaliser
        with EventStorage():
            got, expected = ours.train()(batch), theirs.train()(batch)
        for key in LOSS_KEYS:
            assert torch.equal(got[key], expected[key]), key
    with torch.no_grad():
        got, expected = ours.eval()(batch), theirs.eval()(batch)
    for a, b in zip(got, expected):
        a, b = a["instances"], b["instances"]
        assert len(a) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


def test_scale_per_level_parameters_and_head_output(small_cfg):
    """Five extra parameters ``head.scales.<l>.scale`` (1.0, shape (1,)) that multiply the
    box output of their level; the tower hook of TF-HEAD computes the same outputs."""
    torch.manual_seed(0)
    plain = set(build_model(small_cfg).state_dict())
    small_cfg.MODEL.FCOS.SCALE_PER_LEVEL = True
    model = build_model(small_cfg)
    keys = set(model.state_dict())
    assert plain <= keys and keys - plain == {f"head.scales.{i}.scale" for i in range(5)}
    head = model.head
    assert all(torch.equal(s.scale, torch.ones(1)) for s in head.scales)
    values = [0.5, -1.0, 2.0, 3.0, 4.0]
    with torch.no_grad():
        for s, v in zip(head.scales, values):
            s.scale.fill_(v)
    feats = [torch.randn(2, 32, h, h) for h in (8, 4, 2, 2, 1)]
    logits, deltas, ctr = head(feats)
    (logits2, deltas2, ctr2), towers = _fcos_head_with_towers(head, feats)
    for i, (x, v) in enumerate(zip(feats, values)):
        box_tower = head.bbox_subnet(x)
        expected = head.bbox_pred(box_tower) * v
        torch.testing.assert_close(deltas[i], expected, rtol=0, atol=0)
        torch.testing.assert_close(deltas2[i], expected, rtol=0, atol=0)
        torch.testing.assert_close(ctr[i], head.ctrness(box_tower), rtol=0, atol=0)
        torch.testing.assert_close(towers[i], head.cls_subnet(x), rtol=0, atol=0)
        assert torch.equal(logits[i], logits2[i]) and torch.equal(ctr[i], ctr2[i])
    # the scales learn
    sum(d.sum() for d in deltas).backward()
    assert all(s.scale.grad is not None and s.scale.grad.abs() > 0 for s in head.scales)


def test_inference_decodes_relu_of_scaled_output_times_stride(small_cfg):
    """Every location predicts (l, t, r, b) = relu(scale_l * 1) * stride_l around its point
    ((i + 0.5) * stride): the boxes of all locations and classes, with their scores."""
    _official(small_cfg)
    small_cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0
    small_cfg.MODEL.FCOS.NMS_THRESH_TEST = 1.0  # keeps everything
    torch.manual_seed(0)
    model = build_model(small_cfg).eval()
    values = [0.5, 1.0, 2.0, 3.0, -1.0]
    with torch.no_grad():
        model.head.bbox_pred.weight.zero_()
        model.head.bbox_pred.bias.fill_(1.0)
        for s, v in zip(model.head.scales, values):
            s.scale.fill_(v)
        images = model.preprocess_image(_inputs((True,)))
        features = model.backbone(images.tensor)
        feats = [features[f] for f in model.head_in_features]
        predictions = model.head(feats)
        model.test_topk_candidates = model.max_detections_per_image = 10**6
        result = model.forward_inference(images, feats, predictions)[0]
    strides = [model.backbone.output_shape()[f].stride for f in model.head_in_features]
    expected_boxes, expected_scores = [], []
    for x, logits, ctr, v, stride in zip(feats, predictions[0], predictions[2], values, strides):
        h, w = x.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cx, cy = (xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride
        half = max(v, 0.0) * stride
        boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)  # (HW, 4)
        p = logits[0].sigmoid().flatten(1).T  # (HW, K)
        c = ctr[0].sigmoid().flatten()[:, None]
        expected_boxes.append(boxes[:, None].expand(-1, 3, -1).reshape(-1, 4))
        expected_scores.append(torch.sqrt(p * c).flatten())
    expected = torch.cat([torch.cat(expected_boxes), torch.cat(expected_scores)[:, None]], 1)
    got = torch.cat([result.pred_boxes.tensor, result.scores[:, None]], 1)
    assert got.shape == expected.shape
    torch.testing.assert_close(_sorted_rows(got), _sorted_rows(expected))


def _sorted_rows(t):
    for col in reversed(range(t.shape[1])):
        t = t[t[:, col].argsort(stable=True)]
    return t


def _sigmoid_focal(x, t, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    if t:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def _bce(x, t):
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _loss_inputs():
    """One level of three 8-px locations: two positives, one background (class K = 3).

    Location 0 (point (4, 4)) -> box (0, 0, 16, 8): l, t, r, b = 4, 4, 12, 4, centerness
    sqrt(1/3); predicted (4, 4, 8, 4) px = box (0, 0, 12, 8): IoU = GIoU = 96/128, loss 1/4.
    Location 1 (point (12, 4)) -> box (10, 0, 14, 8): 2, 4, 2, 4, centerness 1; predicted
    (2, 4, 6, 2) px = box (10, 0, 18, 6): intersection 24, union 56, hull 64, GIoU
    24/56 - 8/64 = 17/56, loss 39/56.
    """
    anchors = [Boxes(torch.tensor([[0.0, 0, 8, 8], [8, 0, 16, 8], [16, 0, 24, 8]]))]
    logits = [torch.tensor([[[0.3, -1.0, 0.2], [-2.0, 0.5, 1.5], [0.1, -0.4, -3.0]]])]
    deltas = [torch.tensor([[[0.5, 0.5, 1.0, 0.5], [0.25, 0.5, 0.75, 0.25], [1, 1, 1, 1]]])]
    ctr = [torch.tensor([[[0.3], [-0.2], [0.7]]])]
    labels = [torch.tensor([0, 2, 3])]
    boxes = [Boxes(torch.tensor([[0.0, 0, 16, 8], [10, 0, 14, 8], [16, 0, 24, 8]]))]
    return anchors, logits, labels, deltas, boxes, ctr


def _hand_losses(weighted, normalizer):
    logits = [[0.3, -1.0, 0.2], [-2.0, 0.5, 1.5], [0.1, -0.4, -3.0]]
    classes = [0, 2, None]
    cls = sum(
        _sigmoid_focal(x, int(k == c)) for row, c in zip(logits, classes) for k, x in enumerate(row)
    )
    ctr_t = [math.sqrt(1 / 3), 1.0]
    ctr = _bce(0.3, ctr_t[0]) + _bce(-0.2, ctr_t[1])
    giou = [1 / 4, 39 / 56]
    if weighted:
        loc = (ctr_t[0] * giou[0] + ctr_t[1] * giou[1]) / (ctr_t[0] + ctr_t[1])
    else:
        loc = (giou[0] + giou[1]) / normalizer
    return {
        "loss_fcos_cls": cls / normalizer,
        "loss_fcos_loc": loc,
        "loss_fcos_ctr": ctr / normalizer,
    }


@pytest.mark.parametrize(
    "weighted, across",
    [(False, False), (True, True), (False, True), (True, False)],
    ids=["detectron2", "official", "averaged_only", "weighted_only"],
)
def test_losses_against_hand_computation(small_cfg, weighted, across):
    """Centerness-weighted GIoU and the exact positive-count normaliser (2 positives) or
    detectron2's EMA (0.9 * 300 + 0.1 * 2 on the first call), computed by hand."""
    small_cfg.MODEL.FCOS.BOX_LOSS_CENTERNESS_WEIGHTED = weighted
    small_cfg.MODEL.FCOS.NORM_ACROSS_WORKERS = across
    model = build_model(small_cfg)
    for step in range(2):
        with EventStorage():
            got = model.losses(*_loss_inputs())
        normalizer = 2.0 if across else 0.9 * 300 + 0.1 * 2
        if not across and step == 1:
            normalizer = 0.9 * normalizer + 0.1 * 2
        expected = _hand_losses(weighted, normalizer)
        for key in LOSS_KEYS:
            assert got[key].item() == pytest.approx(expected[key], rel=1e-5), (key, step)
    assert hasattr(model, "loss_normalizer") != across  # no EMA state with the exact count


def test_weighted_loss_without_positives_is_zero_with_a_graph(small_cfg):
    _official(small_cfg)
    model = build_model(small_cfg)
    anchors, logits, labels, deltas, boxes, ctr = _loss_inputs()
    deltas[0].requires_grad_(True)
    with EventStorage():
        got = model.losses(anchors, logits, [torch.tensor([3, 3, 3])], deltas, boxes, ctr)
    assert got["loss_fcos_loc"].item() == 0 and got["loss_fcos_ctr"].item() == 0
    assert got["loss_fcos_cls"].item() > 0  # divided by max(0, 1)
    got["loss_fcos_loc"].backward()  # a graph, zero gradient
    assert deltas[0].grad.abs().sum() == 0


def _reference_match(points, strides, first, last, gt_boxes, radius=1.5):
    """cvpods' FCOS get_ground_truth (as LGD runs it), written out: centre box clipped to the
    GT box, closed size ranges [4, 8] strides (first level from -1, last to inf), the smallest
    box wins. points (R, 2), strides (R,); returns (R,) matched index or -1."""
    x0, y0, x1, y1 = gt_boxes.unbind(dim=1)  # (M,)
    px, py = points[:, 0:1], points[:, 1:2]  # (R, 1)
    ltrb = torch.stack([px - x0, py - y0, x1 - px, y1 - py], dim=2)  # (R, M, 4)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, radius * strides[:, None]
    cbox = torch.stack(
        [
            torch.maximum(cx - r, x0),
            torch.maximum(cy - r, y0),
            torch.minimum(cx + r, x1),
            torch.minimum(cy + r, y1),
        ],
        dim=2,
    )
    inside = torch.stack(
        [px - cbox[..., 0], py - cbox[..., 1], cbox[..., 2] - px, cbox[..., 3] - py], dim=2
    )
    lo = torch.where(first, torch.full_like(strides, -1.0), 4 * strides)[:, None]
    hi = torch.where(last, torch.full_like(strides, float("inf")), 8 * strides)[:, None]
    reach = ltrb.max(dim=2).values
    ok = (inside.min(dim=2).values > 0) & (reach >= lo) & (reach <= hi)
    area = ((x1 - x0) * (y1 - y0))[None].expand_as(ok).masked_fill(~ok, float("inf"))
    best, idx = area.min(dim=1)
    return torch.where(torch.isinf(best), torch.full_like(idx, -1), idx)


def test_size_range_inclusive_matches_the_official_rule(small_cfg):
    """Random boxes plus two whose largest side distance is exactly 64 px from a point: the
    upper end of P3's range (point (100, 100) of box (36, 80, 164, 120)) and the lower end of
    P4's (point (104, 104) of box (40, 84, 168, 124)). Closed ranges = the reference; open
    ranges (detectron2) lose exactly those two positives."""
    torch.manual_seed(0)
    model = build_model(small_cfg)
    size = 256
    strides_l = [8, 16, 32, 64, 128]
    anchors = model.anchor_generator([torch.zeros(1, 1, size // s, size // s) for s in strides_l])
    points = Boxes.cat(anchors).get_centers()
    strides = torch.cat([torch.full((len(a),), float(s)) for a, s in zip(anchors, strides_l)])
    first = torch.zeros(len(points), dtype=torch.bool)
    first[: len(anchors[0])] = True
    last = torch.zeros(len(points), dtype=torch.bool)
    last[-len(anchors[-1]) :] = True

    xy = torch.rand(12, 2) * 200
    wh = torch.rand(12, 2) * 180 + 4
    random_boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
    edge_p3 = torch.tensor([[36.0, 80, 164, 120]])
    edge_p4 = torch.tensor([[40.0, 84, 168, 124]])
    gts = []
    for boxes in (random_boxes, edge_p3, edge_p4):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        gts.append(inst)

    model.size_range_inclusive = True
    closed = model.match_anchors(anchors, gts)
    model.size_range_inclusive = False
    opened = model.match_anchors(anchors, gts)
    for gt, c, o in zip(gts, closed, opened):
        expected = _reference_match(points, strides, first, last, gt.gt_boxes.tensor)
        assert torch.equal(c, expected)
    assert (closed[0] >= 0).sum() > 10 and torch.equal(closed[0], opened[0])
    for k, point in ((1, (100.0, 100.0)), (2, (104.0, 104.0))):
        box = gts[k].gt_boxes.tensor[0]
        reach = torch.cat([points - box[:2], box[2:] - points], dim=1).amax(dim=1)
        differ = (closed[k] >= 0) != (opened[k] >= 0)
        assert differ.any() and torch.equal(differ, (closed[k] >= 0) & (reach == 64))
        at = ((points - torch.tensor(point)).abs().sum(dim=1) == 0) & (strides == 8 * k)
        assert closed[k][at].item() == 0 and opened[k][at].item() == -1


def test_filter_on_cls_prob_test(small_cfg):
    """Threshold 0.1. Location A: p = 0.5, centerness 0.01 -> score 0.0707; location B:
    p = 0.09, centerness 0.99 -> score 0.298. cvpods keeps A (p > 0.1), detectron2 keeps B
    (score > 0.1); both score sqrt(p * centerness)."""
    small_cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.1
    torch.manual_seed(0)
    model = build_model(small_cfg).eval()
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    feats = [torch.zeros(1, 32, 64 // s, 64 // s) for s in (8, 16, 32, 64, 128)]
    feats[-1] = torch.zeros(1, 32, 1, 1)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    logits = [torch.full((1, 3, *f.shape[-2:]), -20.0) for f in feats]
    ctr = [torch.full((1, 1, *f.shape[-2:]), -20.0) for f in feats]
    deltas = [torch.ones(1, 4, *f.shape[-2:]) for f in feats]
    logits[0][0, 1, 2, 3], ctr[0][0, 0, 2, 3] = logit(0.5), logit(0.01)  # A: class 1
    logits[1][0, 2, 1, 1], ctr[1][0, 0, 1, 1] = logit(0.09), logit(0.99)  # B: class 2
    for on, (cls, score, center) in (
        (True, (1, math.sqrt(0.5 * 0.01), (3.5 * 8, 2.5 * 8))),
        (False, (2, math.sqrt(0.09 * 0.99), (1.5 * 16, 1.5 * 16))),
    ):
        model.filter_on_cls_prob_test = on
        with torch.no_grad():
            r = model.forward_inference(images, feats, [list(x) for x in (logits, deltas, ctr)])
        r = r[0]
        assert len(r) == 1 and r.pred_classes.item() == cls
        assert r.scores.item() == pytest.approx(score, rel=1e-5)
        torch.testing.assert_close(r.pred_boxes.get_centers()[0], torch.tensor(center))


def _losses_and_grads(model, batch):
    model.train()
    model.zero_grad()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _invariance_model():
    """Options on, FrozenBN: the forward of an image does not depend on the others. The
    ResNet is frozen (fewer gradients to compute; the FPN and head ones are compared)."""
    cfg = _official(_small_cfg())
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    torch.manual_seed(0)
    return build_model(cfg)


def _invariance_batch():
    """Four images of one size; the halves have 2 and 1 images with boxes."""
    return _inputs((True, True, True, False))


def _assert_mean_of_halves(halves, full):
    for key in LOSS_KEYS:
        mean = (halves[0][0][key] + halves[1][0][key]) / 2
        torch.testing.assert_close(mean, full[0][key], rtol=1e-5, atol=1e-7)
    assert set(halves[0][1]) == set(full[1])
    for name, grad in full[1].items():
        mean = (halves[0][1][name] + halves[1][1][name]) / 2
        torch.testing.assert_close(mean, grad, rtol=1e-4, atol=1e-7, msg=name)


def test_averaged_normaliser_is_batch_invariant_simulated_workers(monkeypatch):
    """2 simulated workers x 2 images == 1 worker x 4 images (losses: mean over workers;
    gradients: DDP's mean). ``count_over_workers`` is replaced by the value it would return
    with 2 workers: max(sum of both workers' values, minimum) / 2."""
    model = _invariance_model()
    batch = _invariance_batch()
    full = _losses_and_grads(model, batch)
    halves_batches = (batch[:2], batch[2:])

    seen = ([], [])
    alone = []
    original = fcos_module.count_over_workers
    for w, half in enumerate(halves_batches):  # each worker's values, normalised alone

        def record(count, minimum=1.0, _w=w):
            seen[_w].append(count.detach().clone())
            return original(count, minimum)

        monkeypatch.setattr(fcos_module, "count_over_workers", record)
        alone.append(_losses_and_grads(model, half))
    assert len(seen[0]) == len(seen[1]) == 2  # positive count, centerness sum
    assert seen[0][0] != seen[1][0]
    # normalised per worker, the halves do not average to the full batch
    mean_alone = (alone[0][0]["loss_fcos_cls"] + alone[1][0]["loss_fcos_cls"]) / 2
    assert not torch.allclose(mean_alone, full[0]["loss_fcos_cls"], rtol=1e-5, atol=0)

    halves = []
    for w, half in enumerate(halves_batches):
        calls = iter(range(len(seen[w])))

        def two_workers(count, minimum=1.0, _calls=calls):
            i = next(_calls)
            return (seen[0][i] + seen[1][i]).clamp(min=minimum) / 2

        monkeypatch.setattr(fcos_module, "count_over_workers", two_workers)
        halves.append(_losses_and_grads(model, half))
    _assert_mean_of_halves(halves, full)


def _gloo_worker(out_dir):
    """One of 2 gloo processes: its half of the invariance batch, losses and gradients."""
    rank = dist.get_rank()
    model = _invariance_model()
    half = _invariance_batch()[2 * rank : 2 * rank + 2]
    losses, grads = _losses_and_grads(model, half)
    torch.save((losses, grads), os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_averaged_normaliser_is_batch_invariant_two_gloo_processes(tmp_path):
    """The same check with a real all-reduce: 2 CPU processes (gloo) x 2 images."""
    launch(_gloo_worker, 2, dist_url="auto", backend="gloo", args=(str(tmp_path),))
    halves = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    full = _losses_and_grads(_invariance_model(), _invariance_batch())
    _assert_mean_of_halves(halves, full)


def test_lgd_teacher_loss_path_uses_the_options(small_cfg):
    """LGD's teacher calls ``adapter.losses_on_features``: the head (with its scales) on other
    maps and the student's recorded targets. On the student's own maps it reproduces the
    student's losses exactly (the exact normaliser has no state to update twice)."""
    _official(small_cfg)
    torch.manual_seed(0)
    model = build_model(small_cfg).train()
    adapter = build_adapter(model)
    batch = _inputs((True, False))
    with EventStorage():
        images, gt = adapter.preprocess(model, batch)
        outputs = adapter.run(model, images, gt)
        outputs.targets = adapter.targets(model, outputs)
        student = adapter.task_losses(model, outputs)
        assert outputs.targets.labels.shape[0] == len(batch)
        same = adapter.losses_on_features(model, outputs, outputs.features)
        noisy = {k: v + torch.randn_like(v) for k, v in outputs.features.items()}
        other = adapter.losses_on_features(model, outputs, noisy)
    for key in LOSS_KEYS:
        assert torch.equal(student[key], same[key]), key
    assert other["loss_fcos_cls"] != student["loss_fcos_cls"]
    model.zero_grad()
    other["loss_fcos_loc"].backward()
    assert all(s.scale.grad is not None for s in model.head.scales[:2])


@pytest.mark.slow
def test_official_option_set_trains_and_evaluates(tiny_cfg):
    """A few iterations of the trainer on the toy set, then COCO evaluation."""
    cfg = _official(tiny_cfg("fcos"))
    cfg.SOLVER.MAX_ITER = 4
    seed_all_rng(0)
    trainer = Trainer(cfg)
    model = trainer.model
    trainer.train()
    scales = torch.cat([s.scale.detach() for s in model.head.scales])
    assert not torch.equal(scales, torch.ones(5))  # trained
    results = Trainer.test(cfg, model)
    assert set(results) == {"bbox"} and math.isfinite(results["bbox"]["AP"])


def test_tf_head_fcos_assistant_uses_the_official_options(tiny_cfg):
    """TF-HEAD's FCOS assistant (MMDetection's FCOSHead of the dev branch): per-level scales
    named ``distillers.0.fcos.head.scales.<l>.scale``, the official loss switches, and one
    training step whose FCOS losses and tower hook go through the scaled head."""
    cfg = tiny_cfg("retinanet")
    cfg.MODEL.FPN.OUT_CHANNELS = 64  # GN(32) of the assistant on the 1x1 P7 maps
    cfg.MODEL.META_ARCHITECTURE = "DistillationDetector"
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.DISTILL.DISTILLERS = ["TFHEADDistiller"]
    h = cfg.MODEL.DISTILL.HEAD
    h.ASSIST.INIT_FROM_TEACHER = False
    h.ASSIST.FC_DIM, h.ASSIST.BATCH_SIZE_PER_IMAGE = 64, 32
    h.AKD.LOSS_WEIGHT = h.CKD.LOSS_WEIGHT = 0.0
    h.TF.FCOS_NUM_CONVS = 1
    torch.manual_seed(0)
    model = build_model(cfg)
    fcos = model.distillers[0].fcos
    assert fcos.box_loss_centerness_weighted and fcos.norm_across_workers
    assert fcos.size_range_inclusive
    scale_keys = {k for k in model.state_dict() if ".scales." in k}
    assert scale_keys == {f"distillers.0.fcos.head.scales.{i}.scale" for i in range(5)}
    data = toy_batch(cfg, start=0)  # image 0 has no box
    model.train()
    with EventStorage(2500):  # past both warm-ups
        losses = model(data)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_assist_fcos_loc"] > 0 and losses["loss_distill_self_fcos"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss_assist_fcos")).backward()
    assert all(s.scale.grad is not None for s in fcos.head.scales)
