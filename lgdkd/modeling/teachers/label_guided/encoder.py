"""LGD's label encoder: a PointNet with two T-Nets and LayerNorms without affine
parameters, a max over the boxes of each image as global feature."""

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LabelEncoder", "TNet", "layer_norm"]


def layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:])


class _MLP(nn.Module):
    """Linear -> LayerNorm (no affine) -> ReLU per step; the official Conv1d(k=1) + LayerNorm
    over a length-1 sequence computes exactly this."""

    def __init__(self, dims: List[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer_norm(layer(x)))
        return x


class TNet(nn.Module):
    """PointNet's T-Net on one descriptor per row: (..., k) -> a (..., k, k) matrix.

    64-128-1024 "convs" then 512-256 FCs (each with LayerNorm and ReLU) and a linear map to k*k.
    As in the official code no identity is added and there is no orthogonality loss.
    """

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.convs = _MLP([k, 64, 128, 1024])
        self.fcs = _MLP([1024, 512, 256])
        self.out = nn.Linear(256, k * k)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.fcs(self.convs(x))).unflatten(-1, (self.k, self.k))


class LabelEncoder(nn.Module):
    """PointNet over the label descriptors of each image -> label embeddings.

    ``forward(desc (N, R, D), valid (N, R)) -> (N, R, C)``; the global feature of an image is
    the max over its valid rows only.
    """

    def __init__(self, descriptor_dim: int, embed_dim: int):
        super().__init__()
        self.stn_desc = TNet(descriptor_dim)
        self.conv1 = _MLP([descriptor_dim, 64])
        self.stn_feat = TNet(64)
        self.conv2 = _MLP([64, 128, 1024])
        self.fuse = _MLP([64 + 1024, embed_dim])

    def forward(self, desc: Tensor, valid: Tensor) -> Tensor:
        x = (desc.unsqueeze(-2) @ self.stn_desc(desc)).squeeze(-2)
        x = self.conv1(x)
        local = (x.unsqueeze(-2) @ self.stn_feat(x)).squeeze(-2)
        g = self.conv2(local)
        g = g.masked_fill(~valid[..., None], float("-inf")).amax(dim=1, keepdim=True)
        g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))  # images without rows
        return self.fuse(torch.cat([local, g.expand(-1, local.shape[1], -1)], dim=-1))
