"""detectron2's RetinaNet with a loss normaliser of the whole batch when several workers train.

detectron2 v0.6's ``RetinaNet.losses`` divides both losses by
``self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)``: an exponential moving
average (momentum 0.9, initial value 100) of the positive anchors of *this* worker. Over W
workers of N images each, a worker counts about 1 / W of the positives of the batch but starts
from the same 100, so the early losses are about 1 / W of one process's on the same W N images,
and DDP then averages the gradients.

With ``L_w = s_w / n_w`` (s_w the worker's summed loss) and DDP's average over workers,
``mean_w L_w = sum_w s_w / (W n)`` when every worker uses the same n; one process on the whole
batch gives ``sum_w s_w / E``, E the EMA of the batch's positive count. Both are equal exactly
when ``n = E / W``: an EMA of the positive count averaged over workers, started at 100 / W
(by linearity, E / W). So with W > 1, :func:`ema_update_over_workers`:

* sums the values of all workers (the batch's count, each worker's clamped at 1 as detectron2
  clamps it; exact as long as every worker has a positive anchor),
* keeps in ``loss_normalizer`` the EMA one process would keep for the whole batch (so a
  checkpoint's value, saved by :class:`lgdkd.engine.trainer.ModuleAttributes`, means the same
  whatever the number of workers, and a run may resume on another number of workers),
* returns that EMA / W.

With one worker it is detectron2's ``_ema_update`` itself: losses are bit-identical.

MMDetection's RetinaNet (the HEAD repository's students) divides by the positive count of each
batch instead, without an EMA; that is not offered here.
"""

import torch
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils import comm

from ...utils.dist import sum_over_workers

__all__ = ["ema_update_over_workers"]

# detectron2's implementation (RetinaNet v0.6 inherits it; taken from DenseDetector so that a
# reload of this module cannot wrap the patched method in itself)
_STOCK_EMA_UPDATE = DenseDetector._ema_update


def ema_update_over_workers(
    self: DenseDetector, name: str, value: float, initial_value: float, momentum: float = 0.9
) -> float:
    """``DenseDetector._ema_update`` of the batch's count over all workers, divided by the
    number of workers (see the module docstring); detectron2's own with one worker.

    Every worker must call it at the same point of its iteration (it is a collective).

    Args:
        name: attribute holding the EMA of the whole batch (RetinaNet: "loss_normalizer").
        value: this worker's count (RetinaNet: max(positive anchors, 1)).
        initial_value: the EMA's value before the first update, for the whole batch (100).
    Returns:
        the normaliser of this worker's loss sums: EMA / W.
    """
    world = comm.get_world_size()
    if world == 1:
        return _STOCK_EMA_UPDATE(self, name, value, initial_value, momentum)
    total = sum_over_workers(self.pixel_mean.new_tensor(float(value), dtype=torch.float64))
    return _STOCK_EMA_UPDATE(self, name, total.item(), initial_value, momentum) / world


# Installed on detectron2's own class rather than on an lgdkd subclass registered in its place:
# a model built from META_ARCHITECTURE "RetinaNet" stays exactly detectron2's class (its type,
# state dict and pickles unchanged), lgdkd.export keeps treating it as a stock detectron2
# meta-architecture (it checks the registered class's module), every RetinaNet subclass gets
# the same normaliser, and detectron2's Registry, which cannot replace an entry publicly, is
# left alone. Nothing changes in a single process or in a program that does not import
# lgdkd.modeling.
RetinaNet._ema_update = ema_update_over_workers
