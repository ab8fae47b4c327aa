"""Several workers: 1 process x 2N images gives the losses and updates of 2 processes x N.

The unit tests fake a second worker inside this process (``comm.get_world_size`` and
``all_reduce`` patched) to check the normaliser arithmetic; the end-to-end test trains tiny
RetinaNet, GFL and PAA models (GroupNorm or no norm: no batch statistics) for two steps in one
process on 4 images and in two gloo processes on 2 images each, under DDP.
"""

import types

import pytest
import torch
import torch.distributed as dist
from conftest import toy_batch
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import lgdkd.modeling  # noqa: F401  (the RetinaNet normaliser over workers)
from lgdkd.engine.launch import launch
from lgdkd.engine.trainer import ModuleAttributes
from lgdkd.export import is_stock_detectron2
from lgdkd.modeling.detectors.paa import PAA
from lgdkd.modeling.detectors.retinanet import ema_update_over_workers
from lgdkd.utils.dist import count_over_workers


# ------------------------------------------------------------------------- a faked 2nd worker
@pytest.fixture
def second_worker(monkeypatch):
    """Pretend to be worker 0 of 2; ``other`` is a list of the values the other worker adds
    to this one's in each all-reduce, in order."""
    other = []

    def all_reduce(tensor, *args, **kwargs):
        tensor += torch.as_tensor(other.pop(0), dtype=tensor.dtype)

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    return other


class _Detector(nn.Module):
    """Stands in for a RetinaNet: ``_ema_update`` needs ``pixel_mean`` (for the device)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), False)


def _ema(counts, initial=100.0, momentum=0.9):
    """One process's EMAs after each count (detectron2's formula)."""
    out, value = [], initial
    for c in counts:
        value = value * momentum + c * (1 - momentum)
        out.append(value)
    return out


def test_retinanet_normaliser_is_the_batch_ema_over_workers(second_worker):
    assert RetinaNet._ema_update is ema_update_over_workers
    local, other = [7, 1, 30, 12], [5, 9, 2, 40]  # positives of this / the other worker
    detector = _Detector()
    second_worker.extend(other)
    norms = [ema_update_over_workers(detector, "loss_normalizer", c, 100) for c in local]
    whole = _ema([a + b for a, b in zip(local, other)])
    # returned: the EMA of the averaged count started at 100 / 2 = the batch's EMA / 2
    assert norms == pytest.approx(_ema([(a + b) / 2 for a, b in zip(local, other)], 50.0))
    assert norms == [e / 2 for e in whole]  # dividing by 2 is exact
    # kept: what one process holds for the whole batch, so checkpoints do not depend on W
    assert detector.loss_normalizer == whole[-1]
    assert ModuleAttributes(detector).state_dict() == {":loss_normalizer": whole[-1]}
    # DDP's mean of s_w / norm is the one-process loss sum / EMA
    s_local, s_other = 3.5, 11.25
    assert (s_local / norms[-1] + s_other / norms[-1]) / 2 == pytest.approx(
        (s_local + s_other) / whole[-1], rel=1e-12
    )


def test_retinanet_normaliser_unchanged_with_one_worker():
    detector, stock = _Detector(), _Detector()
    for c in (7, 1, 30):
        a = ema_update_over_workers(detector, "loss_normalizer", c, 100)
        b = DenseDetector._ema_update(stock, "loss_normalizer", c, 100)
        assert a == b and detector.loss_normalizer == stock.loss_normalizer


def test_retinanet_stays_detectron2s(tiny_cfg):
    cfg = tiny_cfg("retinanet")
    model = build_model(cfg)
    assert type(model) is RetinaNet  # same class, state dict and pickles as stock detectron2
    assert is_stock_detectron2(cfg)  # so the exported student's config stays stock


def test_count_clamped_for_the_whole_batch(second_worker):
    # one positive among two workers: one process divides by max(1, 1) = 1, so each worker
    # must divide by 1 / 2 (clamping the average 0.5 at 1 would halve the loss)
    second_worker.append(0.0)
    assert count_over_workers(torch.tensor(1.0)).item() == 0.5
    second_worker.append(torch.tensor([4.0, 0.0]))
    assert count_over_workers(torch.tensor([2.0, 0.0])).tolist() == [3.0, 0.5]


def test_count_clamp_unchanged_with_one_worker():
    x = torch.tensor([0.0, 0.3, 2.0])
    assert torch.equal(count_over_workers(x), x.clamp(min=1.0))
    assert torch.equal(count_over_workers(x, 1e-6), x.clamp(min=1e-6))


def test_paa_normalisers_of_the_whole_batch(second_worker):
    """max(positives, images) over the batch: both counts averaged before the max."""
    paa = types.SimpleNamespace(norm_across_gpus=True)
    # this worker: 3 positives, 2 images, IoU sum 1.5; the other: 0, 2, 0
    second_worker.append(torch.tensor([0.0, 2.0, 0.0]))
    cls, pos, iou = PAA._normalisers(paa, torch.tensor(3.0), 2, torch.tensor(1.5))
    # one process: max(3, 4) = 4, 3 and 1.5, each / 2 workers
    assert (cls.item(), pos.item(), iou.item()) == (2.0, 1.5, 0.75)
    paa.norm_across_gpus = False  # legacy: this worker's counts
    cls, pos, iou = PAA._normalisers(paa, torch.tensor(3.0), 2, torch.tensor(1.5))
    assert (cls.item(), pos.item(), iou.item()) == (3.0, 3.0, 1.5)


# ------------------------------------------------------------------------ 2 gloo processes
ARCHS = ("retinanet", "gfl", "paa")
IMAGES = [1, 2, 3, 5]  # toy_train images with objects (0 and 4 have none); all 96 x 128
STEPS = 2


def _no_batch_statistics(cfg):
    cfg.MODEL.RESNETS.NORM = "GN"  # BatchNorm would normalise each process's images apart
    cfg.MODEL.RETINANET.NORM = "GN"
    return cfg


def _train(cfg, batch, ddp: bool):
    """Losses of each of STEPS SGD steps, the weights after them and the checkpointed module
    attributes (RetinaNet's loss_normalizer)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    net = DistributedDataParallel(model) if ddp else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    with EventStorage(0) as storage:
        for _ in range(STEPS):
            loss_dict = net(batch)
            optimizer.zero_grad()
            sum(loss_dict.values()).backward()
            optimizer.step()
            losses.append({k: v.item() for k, v in loss_dict.items()})
            storage.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return losses, state, ModuleAttributes(model).state_dict()


def _worker(cfgs, halves, result_file):
    torch.set_num_threads(1)
    out = {}
    for arch, cfg in cfgs.items():
        losses, state, attributes = _train(cfg, halves[comm.get_rank()], ddp=True)
        gathered = [None] * comm.get_world_size()
        dist.all_gather_object(gathered, losses)  # the logged value: mean over workers
        mean = [
            {k: sum(g[i][k] for g in gathered) / len(gathered) for k in losses[i]}
            for i in range(STEPS)
        ]
        out[arch] = (mean, state, attributes)
    if comm.get_rank() == 0:
        torch.save(out, result_file)


@pytest.mark.slow
def test_one_process_equals_two(tiny_cfg, tmp_path):
    """RetinaNet (GN head), GFL and PAA (NORM_ACROSS_GPUS, the default) on GN ResNets: the
    mean of the two workers' losses is the single process's, and so are the weights."""
    cfgs = {arch: _no_batch_statistics(tiny_cfg(arch)) for arch in ARCHS}
    batch = [toy_batch(cfgs["retinanet"], n=6)[i] for i in IMAGES]
    result_file = str(tmp_path / "two_processes.pth")
    launch(
        _worker,
        2,
        dist_url="auto",
        args=(cfgs, [batch[:2], batch[2:]], result_file),
        backend="gloo",
    )
    two = torch.load(result_file, weights_only=False)
    for arch, cfg in cfgs.items():
        losses, state, attributes = _train(cfg, batch, ddp=False)
        mean, state2, attributes2 = two[arch]
        for step in range(STEPS):
            assert mean[step].keys() == losses[step].keys()
            for k, v in losses[step].items():
                assert mean[step][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (arch, step, k)
        for k, v in state.items():
            torch.testing.assert_close(state2[k], v, rtol=1e-5, atol=1e-6, msg=f"{arch}: {k}")
        assert attributes2 == pytest.approx(attributes, rel=1e-12)
