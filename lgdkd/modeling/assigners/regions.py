"""Distillation regions from ground-truth boxes.

Shape shorthand: N images, B = most boxes in one image of the batch, H x W one level.
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor

from ..distill.outputs import Assignment, DetectorOutputs
from ..distill.registries import ASSIGNER_REGISTRY
from ..distill.roles import Assigner

__all__ = ["gt_box_masks", "valid_region_masks", "GTBoxAssigner"]


def _centers(h: int, w: int, stride: int, device):
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    return ys, xs


def gt_box_masks(
    gt_instances: List[Instances], features: Dict[str, Tensor], strides: Dict[str, int]
) -> Dict[str, Tensor]:
    """Per level, 1 where a cell centre ((i + 0.5) * stride) lies inside a ground-truth box.

    Args:
        gt_instances: N Instances with ``gt_boxes`` in padded-image pixels (XYXY).
        features: level name -> (N, C, H, W), for the sizes.
        strides: level name -> stride.
    Returns:
        level name -> (N, 1, H, W) float mask. Images without boxes give all zeros.
    """
    n = len(gt_instances)
    device = next(iter(features.values())).device
    b = max([len(x) for x in gt_instances] + [1])
    boxes = torch.zeros(n, b, 4, device=device)  # padded rows are empty boxes: contain nothing
    for i, inst in enumerate(gt_instances):
        boxes[i, : len(inst)] = inst.gt_boxes.tensor.to(device)
    x0, y0, x1, y1 = (boxes[..., k, None, None] for k in range(4))  # (N, B, 1, 1)
    masks = {}
    for name, f in features.items():
        ys, xs = _centers(f.shape[-2], f.shape[-1], strides[name], device)
        inside_y = (ys[:, None] >= y0) & (ys[:, None] < y1)  # (N, B, H, 1)
        inside_x = (xs[None, :] >= x0) & (xs[None, :] < x1)  # (N, B, 1, W)
        masks[name] = (inside_y & inside_x).any(dim=1, keepdim=True).float()
    return masks


def valid_region_masks(
    image_sizes: List[tuple], features: Dict[str, Tensor], strides: Dict[str, int]
) -> Dict[str, Tensor]:
    """Per level, 1 where a cell centre lies inside the image and 0 on the padding."""
    device = next(iter(features.values())).device
    sizes = torch.tensor(image_sizes, device=device, dtype=torch.float32)  # (N, 2) as (h, w)
    masks = {}
    for name, f in features.items():
        ys, xs = _centers(f.shape[-2], f.shape[-1], strides[name], device)
        in_y = ys[None, :, None] < sizes[:, 0, None, None]  # (N, H, 1)
        in_x = xs[None, None, :] < sizes[:, 1, None, None]  # (N, 1, W)
        masks[name] = (in_y & in_x).unsqueeze(1).float()
    return masks


@ASSIGNER_REGISTRY.register()
class GTBoxAssigner(Assigner):
    """Distill inside ground-truth boxes: ``region_masks`` from :func:`gt_box_masks` on every
    student feature level."""

    needs_teacher_predictions = False

    @configurable
    def __init__(self):
        super().__init__()

    @classmethod
    def from_config(cls, cfg, *, student=None, teacher=None):
        return {}

    @torch.no_grad()
    def forward(self, student: DetectorOutputs, teacher=None) -> Assignment:
        strides = {k: s.stride for k, s in student.feature_shapes.items()}
        return Assignment(
            region_masks=gt_box_masks(student.gt_instances, student.features, strides)
        )
