"""HEAD's distillation losses (AKD on box-head activations, CKD / self-distillation on the
student's anchor features) and their adapters."""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....utils.dist import count_over_workers

__all__ = ["Decouple", "akd_loss", "anchor_feature_loss", "adapter_for"]


class Decouple(nn.Module):
    """Linear C -> A x D; row i keeps the D-slice of its anchor id (the official Decouple)."""

    def __init__(self, c_in: int, c_out: int, num: int):
        super().__init__()
        self.num, self.c_out = num, c_out
        self.linear = nn.Linear(c_in, num * c_out)

    def forward(self, x: Tensor, anchor_ids: Tensor) -> Tensor:
        y = self.linear(x).view(x.shape[0], self.num, self.c_out)
        return y[torch.arange(x.shape[0], device=x.device), anchor_ids]


def _gather_tower(towers: List[Tensor], rows: Tensor) -> Tensor:
    """``towers[level][img, :, y, x]`` for each row (img, level, y, x, a) -> (M, C)."""
    out = towers[0].new_zeros((rows.shape[0], towers[0].shape[1]))
    for lvl, t in enumerate(towers):
        m = rows[:, 1] == lvl
        if m.any():
            r = rows[m]
            out[m] = t[r[:, 0], :, r[:, 2], r[:, 3]]
    return out


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements; 0 (with a graph) when there is no row."""
    if pred.numel() == 0:
        return pred.sum() * 0.0
    return F.mse_loss(pred, target)


def akd_loss(adapters: nn.ModuleDict, acts: Dict[str, Tensor], targets: Dict[str, Tensor]):
    """AKD: sum over the adapted layers of MSE(adapter(student activation), target), each
    the mean over all S x D elements (every sampled RoI, ground-truth rows included)."""
    return sum(_mse(adapters[n](acts[n]), targets[n].detach()) for n in adapters)


def anchor_feature_loss(adapter: nn.Module, towers: List[Tensor], rows: Tensor, target: Tensor):
    """CKD (and TF-HEAD's self_rcnn): MSE between the adapted tower vector at each RoI's
    anchor location, ``towers[level][img, :, y, x]``, and ``target`` (S, D) of that RoI;
    ``rows`` (S, 5) = (img, level, y, x, a). Ground-truth rows (level -1) are left out; a
    decouple adapter takes the slice of anchor a.

    The number of rows left varies per image (its sampled ground-truth rows), so the mean is
    taken over the elements of the whole batch (count averaged over workers: the official
    per-GPU mean made independent of how the batch is split); 0, with a graph, without rows.
    """
    keep = rows[:, 1] >= 0
    rows = rows[keep]
    vec = _gather_tower(towers, rows)
    pred = adapter(vec, rows[:, 4]) if isinstance(adapter, Decouple) else adapter(vec)
    count = count_over_workers(pred.new_tensor(float(pred.numel())))
    return ((pred - target[keep].detach()) ** 2).sum() / count


def adapter_for(s: Tuple[int, ...], t: Tuple[int, ...]) -> nn.Module:
    if len(s) == 1:
        return nn.Linear(s[0], t[0])
    return nn.Conv2d(s[0], t[0], kernel_size=1)
