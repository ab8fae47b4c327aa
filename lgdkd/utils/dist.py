"""Distributed helpers for batch-invariant loss normalisation.

A loss ``L_w = s_w / n`` on worker w, with ``s_w`` a sum over the worker's images, is averaged
by DDP's gradient all-reduce (and by the logged loss, a mean over workers) into
``mean_w L_w = sum_w s_w / (W n)``. It equals the loss of one process holding the whole batch,
``sum_w s_w / n_batch``, exactly when ``n = n_batch / W``: the batch's count averaged over
the W workers, not the worker's own count.
"""

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["mean_over_workers", "sum_over_workers", "count_over_workers"]


def sum_over_workers(value: torch.Tensor) -> torch.Tensor:
    """Sum of a (detached) tensor over all workers; the value itself with one worker."""
    value = value.detach().clone()
    if comm.get_world_size() > 1:
        dist.all_reduce(value)
    return value


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


def count_over_workers(count: torch.Tensor, minimum: float = 1.0) -> torch.Tensor:
    """``max(batch count, minimum) / W``: the normaliser of a per-worker sum (see the module
    docstring) for a count clamped the way one process would clamp the whole batch's.

    Clamping the averaged count at ``minimum`` instead would differ when the batch's count
    lies below ``minimum * W`` (e.g. one positive among two workers: 1 instead of 0.5). With
    one worker this is ``count.clamp(min=minimum)``, bit for bit.

    Args:
        count: a tensor of any shape (e.g. () or one count per level) of this worker.
    """
    return mean_over_workers(count).clamp(min=minimum / comm.get_world_size())
