"""Distributed helpers for batch-invariant loss normalisation."""

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["mean_over_workers"]


def mean_over_workers(value: torch.Tensor) -> torch.Tensor:
    """Average of a (detached) tensor over all workers; the value itself with one worker.

    A loss ``local_sum / mean_over_workers(local_count)`` becomes, after DDP averages the
    gradients, ``global_sum / global_count``: it does not depend on how the batch is split
    over workers or on the number of images per worker.
    """
    value = value.detach().clone()
    if comm.get_world_size() > 1:
        dist.all_reduce(value)
        value /= comm.get_world_size()
    return value
