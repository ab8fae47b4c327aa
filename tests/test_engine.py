"""lgdkd.engine: config loading, exact resume, the training step, optimizer groups, evaluation."""

import argparse
import itertools
import json
import os

import numpy as np
import pytest
import torch
import yaml
from detectron2.engine import HookBase
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.utils.env import seed_all_rng
from torch import nn

from lgdkd.engine import (
    ConfigKeyError,
    ResumableTrainLoader,
    StepTrainer,
    Trainer,
    default_argument_parser,
    default_backend,
    derive_output_dir,
    launch,
    load_config,
    setup,
)
from lgdkd.engine.train_loader import (
    RepeatFactorEpochs,
    ShuffledEpochs,
    build_epoch_order,
    iter_batch_positions,
    iter_stream,
)


def _args(config_file="", opts=(), resume=False):
    return argparse.Namespace(
        config_file=str(config_file), opts=list(opts), resume=resume, eval_only=False
    )


# ------------------------------------------------------------------------------------------
# Config loading and setup
# ------------------------------------------------------------------------------------------
def test_derive_output_dir():
    assert derive_output_dir("configs/LGD/retinanet_R_50_FPN_1x.yaml") == os.path.join(
        "output", "LGD", "retinanet_R_50_FPN_1x"
    )
    assert derive_output_dir("/somewhere/configs/Base-RetinaNet.yaml") == os.path.join(
        "output", "Base-RetinaNet"
    )
    assert derive_output_dir("/tmp/experiments/my_run.yaml") == os.path.join("output", "my_run")
    nested = "/a/configs/x/projects/p/configs/LD/gfl_R_18.yaml"  # the innermost configs/ wins
    assert derive_output_dir(nested) == os.path.join("output", "LD", "gfl_R_18")


def test_load_config_output_dir(tmp_path):
    folder = tmp_path / "configs" / "Demo"
    folder.mkdir(parents=True)
    base = folder / "Base.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.05\n")
    child = folder / "child.yaml"
    child.write_text("_BASE_: Base.yaml\nSOLVER:\n  MAX_ITER: 7\n")
    cfg = load_config(_args(child))
    assert cfg.OUTPUT_DIR == os.path.join("output", "Demo", "child")
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (0.05, 7)
    # set by the command line, by the file, or by a _BASE_ file: kept
    assert load_config(_args(child, ["OUTPUT_DIR", "/x/y"])).OUTPUT_DIR == "/x/y"
    base.write_text("OUTPUT_DIR: from_base\n")
    assert load_config(_args(child)).OUTPUT_DIR == "from_base"
    assert load_config(_args()).OUTPUT_DIR == "./output"  # no config file: detectron2's


def test_unknown_config_key_is_explained(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(ConfigKeyError) as info:
        load_config(_args(path))
    message = str(info.value)
    assert str(path) in message and "SOLVER.BASE_LRR" in message
    assert "SOLVER.BASE_LR" in message.split("Closest valid keys:")[1]

    with pytest.raises(ConfigKeyError) as info:
        load_config(_args(opts=["MODEL.DISTIL.TEACHER.NAME", "x"]))
    message = str(info.value)
    assert "command-line option" in message and "MODEL.DISTIL.TEACHER.NAME" in message
    assert "MODEL.DISTILL.TEACHER.NAME" in message.split("Closest valid keys:")[1]


def test_setup_fixes_and_saves_a_random_seed(tiny_cfg, tmp_path):
    cfg = tiny_cfg("retinanet")
    cfg.SEED = -1
    path = tmp_path / "run.yaml"
    path.write_text(cfg.dump())
    out = str(tmp_path / "run_out")
    first = setup(_args(path, ["OUTPUT_DIR", out]))
    assert first.is_frozen() and first.SEED >= 0 and first.MODEL.DEVICE == "cpu"
    with open(os.path.join(out, "config.yaml")) as f:
        assert yaml.safe_load(f)["SEED"] == first.SEED
    resumed = setup(_args(path, ["OUTPUT_DIR", out], resume=True))
    assert resumed.SEED == first.SEED


def test_single_process_launch_and_backend():
    calls = []
    launch(calls.append, 1, args=("ran",), backend="gloo")
    assert calls == ["ran"]
    assert default_backend("cpu") == "gloo"
    assert default_backend("cuda") == ("nccl" if torch.cuda.is_available() else "gloo")
    with pytest.raises(ValueError, match="backend"):
        launch(calls.append, 2, backend="mpi")
    assert "N\nCPU processes that communicate with the gloo backend" in (
        default_argument_parser().format_help()
    )


# ------------------------------------------------------------------------------------------
# Sampling: a pure function of (seed, position)
# ------------------------------------------------------------------------------------------
def test_epoch_orders_and_stream_positions():
    order = ShuffledEpochs(5, seed=3)
    epochs = [order.indices(e) for e in range(4)]
    assert all(sorted(e.tolist()) == list(range(5)) for e in epochs)
    assert len({tuple(e.tolist()) for e in epochs}) > 1  # reshuffled every epoch
    assert np.array_equal(ShuffledEpochs(5, seed=3).indices(2), epochs[2])
    full = [i for _, i in itertools.islice(iter_stream(order, 0, 0, 1), 20)]
    assert full == np.concatenate(epochs).tolist()
    # two ranks read interleaved global positions; each can start anywhere
    rank1 = list(itertools.islice(iter_stream(order, 3, 1, 2), 4))
    assert rank1 == [(g, full[g]) for g in (7, 9, 11, 13)]

    repeat = RepeatFactorEpochs([0.5, 1.0, 2.5, 1.0], seed=1)
    stream = list(itertools.islice(iter_stream(repeat, 0, 0, 1), 40))
    assert list(itertools.islice(iter_stream(repeat, 17, 0, 1), 23)) == stream[17:]
    counts = np.bincount([i for _, i in stream], minlength=4)
    assert counts[2] > counts[1] > counts[0]


def test_grouped_batches_resume_at_any_iteration():
    order = ShuffledEpochs(7, seed=0)
    groups = np.array([0, 1, 1, 0, 1, 0, 0])
    batches = list(itertools.islice(iter_batch_positions(order, 3, 0, groups=groups), 12))
    for b in batches:
        assert len(b) == 3 and len({groups[i] for _, i in b}) == 1
    later = list(itertools.islice(iter_batch_positions(order, 3, 5, groups=groups), 7))
    assert later == batches[5:]
    plain = list(itertools.islice(iter_batch_positions(order, 3, 4), 2))
    assert [g for g, _ in plain[0]] == [12, 13, 14]


def test_epoch_order_from_config(tiny_cfg):
    cfg = tiny_cfg("retinanet")
    dicts = [
        {"annotations": [{"category_id": i % 2, "iscrowd": 0}], "width": 4, "height": 3}
        for i in range(10)
    ]
    cfg.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
    assert sorted(build_epoch_order(cfg, dicts, 0).indices(0).tolist()) == list(range(10))
    cfg.DATALOADER.SAMPLER_TRAIN = "RandomSubsetTrainingSampler"
    cfg.DATALOADER.RANDOM_SUBSET_RATIO = 0.5
    subset = build_epoch_order(cfg, dicts, 0)
    assert len(subset.indices(0)) == 5 and set(subset.indices(0)) == set(subset.indices(1))
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.0  # every factor is 1
    assert sorted(build_epoch_order(cfg, dicts, 0).indices(3).tolist()) == list(range(10))
    cfg.DATALOADER.SAMPLER_TRAIN = "NoSuchSampler"
    with pytest.raises(ValueError, match="NoSuchSampler"):
        build_epoch_order(cfg, dicts, 0)


class _DroppingMapper:
    """Drops (returns None for) even indices; otherwise returns the index and a numpy draw."""

    def __call__(self, d):
        return None if d["i"] % 2 == 0 else {"i": d["i"], "draw": float(np.random.rand())}


def test_dropped_samples_are_replaced_reproducibly():
    dicts = [{"i": i, "width": 8, "height": 6} for i in range(6)]

    def loader(seed):
        return ResumableTrainLoader(
            dicts,
            mapper=_DroppingMapper(),
            order=ShuffledEpochs(len(dicts), seed),
            total_batch_size=2,
            seed=seed,
        )

    first = list(itertools.islice(loader(0), 5))
    assert all(d["i"] % 2 == 1 for batch in first for d in batch)
    assert list(itertools.islice(loader(0).start_at(2), 3)) == first[2:]
    assert list(itertools.islice(loader(1), 5)) != first


def _batch_signature(batch):
    return [(d["image"].clone(), d["instances"].gt_boxes.tensor.clone()) for d in batch]


def _same_batches(a, b):
    return all(
        torch.equal(ia, ib) and torch.equal(ba, bb)
        for x, y in zip(a, b)
        for (ia, ba), (ib, bb) in zip(x, y)
    )


def test_loader_batches_depend_only_on_seed_and_iteration(tiny_cfg):
    cfg = tiny_cfg("retinanet")
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    loader = Trainer.build_train_loader(cfg)
    assert isinstance(loader, ResumableTrainLoader)
    first = [_batch_signature(b) for b in itertools.islice(loader, 6)]
    resumed = [_batch_signature(b) for b in itertools.islice(loader.start_at(3), 3)]
    assert _same_batches(resumed, first[3:])

    cfg.DATALOADER.NUM_WORKERS = 2
    with_workers = Trainer.build_train_loader(cfg).start_at(2)
    assert _same_batches(
        [_batch_signature(b) for b in itertools.islice(with_workers, 4)], first[2:]
    )

    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 1  # control: the batches do depend on the seed
    other = [_batch_signature(b) for b in itertools.islice(Trainer.build_train_loader(cfg), 6)]
    assert not _same_batches(other, first)


# ------------------------------------------------------------------------------------------
# Exact resume, end to end
# ------------------------------------------------------------------------------------------
class _Interrupted(Exception):
    pass


class _InterruptAfter(HookBase):
    """Stops training after ``iters`` iterations, as a crash or a kill would."""

    def __init__(self, iters):
        self._iters = iters

    def after_step(self):
        if self.trainer.iter + 1 == self._iters:
            raise _Interrupted()


def _train(cfg, resume=False, interrupt_after=None):
    seed_all_rng(0)  # weight init, as default_setup does
    trainer = Trainer(cfg)
    if interrupt_after is not None:
        trainer.register_hooks([_InterruptAfter(interrupt_after)])
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    except _Interrupted:
        pass
    return trainer


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,workers", [("retinanet", 0), ("retinanet", 2), ("faster_rcnn", 0), ("faster_rcnn", 2)]
)
def test_resume_is_exact(tiny_cfg, tmp_path, arch, workers):
    """2N iterations in one run == N iterations, interrupted, then --resume to 2N.

    Compared with torch.equal: both runs execute the same float operations in the same
    order on the same data with the same random draws and thread count, so any difference
    (another flip, resize, image order, RPN/ROI sample, optimizer or loss-normaliser state)
    shows up, however small. (Trainer.train turns TorchScript graph optimisation off for
    this reason: see its docstring.)
    """
    n = 3
    cfg = tiny_cfg(arch)
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER = 2 * n
    cfg.SOLVER.CHECKPOINT_PERIOD = n
    cfg.SOLVER.WARMUP_ITERS = 4  # the LR changes across the interruption

    cfg.OUTPUT_DIR = str(tmp_path / "straight")
    _train(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "resumed")
    _train(cfg, interrupt_after=n)
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    trainer = _train(cfg, resume=True)
    assert trainer.start_iter == n

    straight = _weights(tmp_path / "straight" / "model_final.pth")
    resumed = _weights(tmp_path / "resumed" / "model_final.pth")
    at_n = _weights(tmp_path / "resumed" / f"model_{n - 1:07d}.pth")
    assert straight.keys() == resumed.keys()
    differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:5]}"
    assert any(not torch.equal(at_n[k], resumed[k]) for k in at_n)  # it did train after N


# ------------------------------------------------------------------------------------------
# The training step
# ------------------------------------------------------------------------------------------
class _TwoLayerModel(nn.Module):
    """Test double with the DistillationDetector protocol: ``frozen_parameters``."""

    def __init__(self, frozen_until=2, bad_loss=None):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 1)
        self._frozen_until = frozen_until
        self._bad_loss = bad_loss

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        hidden = self.first(x)
        losses = {
            "loss_task": self.second(hidden).pow(2).mean(),
            "loss_distill_mimic": 0.1 * hidden.pow(2).mean(),
        }
        if self._bad_loss is not None:
            losses["loss_distill_bad"] = hidden.sum() * self._bad_loss
        return losses

    def frozen_parameters(self, iteration):
        return list(self.first.parameters()) if iteration < self._frozen_until else []


class _Snapshot(HookBase):
    """After each step: ``module``'s state, and whether any parameter of ``watched`` has
    optimizer (momentum) state."""

    def __init__(self, module, watched):
        self.module, self.watched, self.after = module, watched, []

    def after_step(self):
        state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        momentum = [
            "momentum_buffer" in self.trainer.optimizer.state.get(p, {})
            for p in self.watched.parameters()
        ]
        self.after.append((state, any(momentum)))


def _step_trainer(model, seed=0):
    torch.manual_seed(0)
    data = itertools.repeat([{"x": torch.randn(4)} for _ in range(2)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    return StepTrainer(model, data, optimizer, seed=seed, frozen_parameters=model.frozen_parameters)


def test_frozen_parameters_get_no_update():
    model = _TwoLayerModel(frozen_until=2)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = _step_trainer(model)
    snap = _Snapshot(model, model.first)
    trainer.register_hooks([snap])
    trainer.train(0, 4)
    states = [s for s, _ in snap.after]
    for it in (0, 1):  # frozen: no gradient step, no weight decay, no momentum
        assert torch.equal(states[it]["first.weight"], initial["first.weight"])
        assert torch.equal(states[it]["first.bias"], initial["first.bias"])
        assert not snap.after[it][1]
    assert not torch.equal(states[2]["first.weight"], initial["first.weight"])
    assert snap.after[2][1]
    previous = initial["second.weight"]
    for state in states:  # the rest trains from the first iteration
        assert not torch.equal(state["second.weight"], previous)
        previous = state["second.weight"]


def test_step_logs_the_gradient_norm_before_clipping():
    """grad_norm: the L2 norm of the step's gradients (frozen parameters left out), before any
    clipping, at every iteration."""
    from detectron2.utils.events import EventStorage

    model = _TwoLayerModel(frozen_until=1)
    trainer = _step_trainer(model)
    seen = []

    class _Grab(HookBase):
        def after_step(self):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            total = torch.cat([g.flatten() for g in grads]).norm().item()
            seen.append((self.trainer.storage.latest()["grad_norm"][0], total, len(grads)))

    trainer.register_hooks([_Grab()])
    with EventStorage(0):
        trainer.train(0, 2)
    assert [n for _, _, n in seen] == [2, 4]  # iteration 0: the first layer is frozen
    for logged, total, _ in seen:
        assert logged == pytest.approx(total, rel=1e-6)


def test_non_finite_loss_names_the_loss_and_iteration():
    model = _TwoLayerModel(frozen_until=0, bad_loss=float("nan"))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = _step_trainer(model)
    with pytest.raises(FloatingPointError) as info:
        trainer.train(3, 5)
    message = str(info.value)
    assert "loss_distill_bad" in message and "iteration 3" in message
    assert "loss_task" not in message.split(":")[1]  # only the non-finite term is named
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@META_ARCH_REGISTRY.register()
class _BackboneFrozenRetinaNet(RetinaNet):
    """RetinaNet whose bottom-up backbone gets no update in iterations 0 and 1."""

    def frozen_parameters(self, iteration):
        return list(self.backbone.bottom_up.parameters()) if iteration < 2 else []


@pytest.mark.slow
def test_trainer_honours_frozen_parameters(tiny_cfg):
    cfg = tiny_cfg("retinanet")
    cfg.MODEL.META_ARCHITECTURE = "_BackboneFrozenRetinaNet"
    cfg.SOLVER.MAX_ITER = 3
    cfg.DATASETS.TEST = ()
    seed_all_rng(0)
    trainer = Trainer(cfg)
    model = trainer.checkpointer.model
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    snap = _Snapshot(model.backbone, model.backbone.bottom_up)
    trainer.register_hooks([snap])
    trainer.train()
    states = [s for s, _ in snap.after]
    bottom_up = [k for k in states[0] if k.startswith("bottom_up.") and "running" not in k]
    bottom_up = [k for k in bottom_up if "num_batches" not in k]
    fpn = [k for k in states[0] if not k.startswith("bottom_up.")]
    for it in (0, 1):
        assert all(torch.equal(states[it][k], initial["backbone." + k]) for k in bottom_up)
        assert not all(torch.equal(states[it][k], initial["backbone." + k]) for k in fpn)
        assert not snap.after[it][1]
    assert not all(torch.equal(states[2][k], initial["backbone." + k]) for k in bottom_up)


# ------------------------------------------------------------------------------------------
# Optimizer: teacher param groups
# ------------------------------------------------------------------------------------------
class _StudentTeacher(nn.Module):
    def __init__(self, teacher_trainable):
        super().__init__()
        self.student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
        self.teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.teacher.requires_grad_(teacher_trainable)


def test_teacher_param_group_lr_factor(tiny_cfg):
    cfg = tiny_cfg("retinanet")
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.MODEL.DISTILL.TEACHER.LR_FACTOR = 0.1
    cfg.SOLVER.WARMUP_ITERS = 100
    model = _StudentTeacher(teacher_trainable=True)
    optimizer = Trainer.build_optimizer(cfg, model)
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        seen |= ids
        if ids & teacher_ids:
            assert ids <= teacher_ids, "a group mixes teacher and student parameters"
            assert group["lr"] == pytest.approx(0.002)
        else:
            assert group["lr"] == pytest.approx(0.02)
    assert seen == {id(p) for p in model.parameters()}

    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)  # warm-up keeps the ratio
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lrs = {
        bool({id(p) for p in g["params"]} & teacher_ids): g["lr"] for g in optimizer.param_groups
    }
    assert lrs[True] == pytest.approx(0.1 * lrs[False]) and lrs[False] < 0.02

    frozen = _StudentTeacher(teacher_trainable=False)
    optimizer = Trainer.build_optimizer(cfg, frozen)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in frozen.student.parameters()}


def test_full_model_gradient_clipping(tiny_cfg):
    """CLIP_TYPE "full_model" scales all gradients together to the joint norm CLIP_VALUE; a
    small norm is left alone; an unknown type is refused."""

    cfg = tiny_cfg("retinanet")
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.BASE_LR = 1.0
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    optimizer = Trainer.build_optimizer(cfg, model)
    for scale, expected_norm in ((3.0, 1.0), (0.1, None)):
        before = [p.detach().clone() for p in model.parameters()]
        grads = [torch.full_like(p, scale) for p in model.parameters()]
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        total = torch.cat([g.flatten() for g in grads]).norm().item()
        optimizer.step()
        steps = [b - p.detach() for b, p in zip(before, model.parameters())]
        norm = torch.cat([s.flatten() for s in steps]).norm().item()
        assert norm == pytest.approx(expected_norm or total, rel=1e-5)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "global"
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        Trainer.build_optimizer(cfg, model)


def test_writers_run_every_log_period(tiny_cfg):
    """metrics.json gets a record every SOLVER.LOG_PERIOD iterations and at the last one."""
    cfg = tiny_cfg("retinanet")
    cfg.SOLVER.MAX_ITER = 5
    cfg.SOLVER.LOG_PERIOD = 2
    cfg.TEST.EVAL_PERIOD = 0
    _train(cfg)
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert [r["iteration"] for r in records if "total_loss" in r] == [1, 3, 4]


# ------------------------------------------------------------------------------------------
# Evaluation of the student and of the teacher
# ------------------------------------------------------------------------------------------
class _DetectorWithTeacher(nn.Module):
    """Test double with the DistillationDetector protocol: ``teacher_for_evaluation``."""

    def __init__(self, student, teacher):
        super().__init__()
        self.student, self.teacher = student, teacher

    def forward(self, batched_inputs):
        return self.student(batched_inputs)

    def teacher_for_evaluation(self):
        return self.teacher


@pytest.mark.slow
def test_teacher_evaluated_apart_from_student(tiny_cfg):
    cfg = tiny_cfg("retinanet")
    seed_all_rng(0)
    model = _DetectorWithTeacher(build_model(cfg), build_model(cfg))
    assert set(Trainer.test(cfg, model)) == {"bbox"}

    cfg.MODEL.DISTILL.TEACHER.EVAL = True
    results = Trainer.test(cfg, model)
    assert set(results) == {"bbox", f"teacher/{cfg.DATASETS.TEST[0]}"}
    assert "AP" in results[f"teacher/{cfg.DATASETS.TEST[0]}"]["bbox"]
    teacher_dir = os.path.join(cfg.OUTPUT_DIR, "inference", "teacher", cfg.DATASETS.TEST[0])
    assert os.path.isfile(os.path.join(teacher_dir, "coco_instances_results.json"))
