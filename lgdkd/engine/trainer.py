"""``Trainer``: detectron2's DefaultTrainer with what distillation and exact resume need.

What differs from ``DefaultTrainer`` and why:

* ``__init__``: DDP gets ``find_unused_parameters`` from MODEL.DISTILL.DDP_FIND_UNUSED_PARAMETERS
  (schedules and frozen parts leave parameters without gradient in some iterations), CPU
  models get no ``device_ids``, and the step is a :class:`StepTrainer` (seeded, finite-loss
  check, frozen parameters).
* ``resume_or_load``: the loading rules of :mod:`lgdkd.engine.checkpointer` (MODEL.WEIGHTS
  initialises the student only; strict resume from the newest readable checkpoint), then a
  training loader that starts at the resumed iteration (:class:`ResumableTrainLoader`), so
  N + resume N iterations equal 2N.
* checkpoints (:class:`RunCheckpointer`: atomic, without a frozen teacher) also hold the
  optimizer state (momentum; detectron2 v0.6 drops it) and module attributes outside state
  dicts (RetinaNet's ``loss_normalizer``, :class:`ModuleAttributes`).
* ``build_optimizer``: :func:`lgdkd.engine.optim.build_optimizer` (a trainable teacher's own
  param groups; clipping that skips parameters without a gradient; "full_model" clipping).
* ``build_evaluator`` / ``test``: COCO or VOC per TEST.EVALUATOR; the teacher is evaluated
  too when MODEL.DISTILL.TEACHER.EVAL (results under ``teacher/<dataset>``).
* ``build_hooks``: detectron2's hooks, writers every SOLVER.LOG_PERIOD iterations.
"""

import json
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import (
    COCOEvaluator,
    PascalVOCDetectionEvaluator,
    inference_on_dataset,
    print_csv_format,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DataParallel, DistributedDataParallel

from .. import data as lgdkd_data
from .checkpointer import RunCheckpointer, load_initial_weights
from .optim import build_optimizer, teacher_param_groups  # noqa: F401  (public here too)
from .train_loader import ResumableTrainLoader
from .train_loop import StepTrainer

__all__ = ["ModuleAttributes", "Trainer", "teacher_param_groups", "unwrap_model"]

logger = logging.getLogger(__name__)

_EVALUATOR_TYPES = {"coco": "coco", "pascal_voc": "voc", "voc": "voc"}
GROUND_TRUTH_RECORD = "ground_truth.json"


def unwrap_model(model):
    """The module inside a (Distributed)DataParallel wrapper, else ``model`` itself."""
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        return model.module
    return model


class Trainer(DefaultTrainer):
    """Trains any detectron2/lgdkd model, including ``DistillationDetector``.

    Use as detectron2's: ``Trainer(cfg)``, ``resume_or_load(resume=...)``, ``train()``;
    ``Trainer.test(cfg, model)`` to evaluate. ``cfg.SEED`` must be >= 0 for an exact resume
    (``lgdkd.engine.setup`` fixes it); with SEED < 0 a seed is picked here and logged.

    Optional methods of the (unwrapped) model that are used when present:
    ``frozen_parameters(iteration) -> list of parameters`` (no update at that iteration) and
    ``teacher_for_evaluation() -> Optional[nn.Module]``.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ is not called: it wraps DDP without find_unused_parameters
        # and builds a SimpleTrainer; the rest of it is reproduced in the same order.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        cfg = _with_fixed_seed(cfg)

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        ddp_kwargs = {}
        if next(model.parameters()).device.type == "cpu":
            ddp_kwargs["device_ids"] = None
        wrapped = create_ddp_model(
            model,
            broadcast_buffers=False,
            find_unused_parameters=cfg.MODEL.DISTILL.DDP_FIND_UNUSED_PARAMETERS,
            **ddp_kwargs,
        )
        self._trainer = StepTrainer(
            wrapped,
            data_loader,
            optimizer,
            seed=cfg.SEED,
            frozen_parameters=getattr(model, "frozen_parameters", None),
            amp=cfg.SOLVER.AMP.ENABLED,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = RunCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            trainer=weakref.proxy(self),
            module_attributes=ModuleAttributes(model),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """detectron2's training loop, with TorchScript graph optimisation off.

        detectron2's scripted losses (e.g. ``sigmoid_focal_loss_jit``) give last-bit different
        gradients in their first, profiling calls than once optimised; a resumed process
        starts with first calls, so with optimisation on, N + resume N would drift from 2N
        iterations by ~1e-5. The scripted functions still run, unfused.
        """
        with torch.jit.optimized_execution(False):
            return super().train()

    def resume_or_load(self, resume=True):
        """With ``resume``, continue from the newest readable checkpoint of OUTPUT_DIR (strict;
        see :mod:`lgdkd.engine.checkpointer`); otherwise, or when there is none, initialise the
        student from MODEL.WEIGHTS and start at iteration 0. Then the training loader starts at
        ``start_iter``."""
        resumed = self.checkpointer.resume() if resume else None
        if resumed is not None:
            # the checkpoint holds the iteration that had just finished
            self.start_iter = self.iter + 1
            self._repair_final_checkpoint(resumed["path"])
        else:
            self.start_iter = 0
            load_initial_weights(self.checkpointer.model, self.cfg.MODEL.WEIGHTS)
        loader = self.data_loader
        if hasattr(loader, "start_at"):
            self._trainer.reset_data_loader(loader.start_at(self.start_iter))
        elif self.start_iter > 0:
            logger.warning(
                f"{type(loader).__name__} cannot start at iteration {self.start_iter}: the "
                "resumed run sees other data than an uninterrupted one would."
            )

    def _repair_final_checkpoint(self, resumed_from: str):
        """A finished run (resumed at the last iteration) whose model_final.pth is missing or
        unreadable gets it rewritten from the checkpoint it resumed from (nothing to train)."""
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        if self.start_iter < self.max_iter or os.path.abspath(resumed_from) == os.path.abspath(
            final
        ):
            return
        logger.warning(
            f"Training had finished but {final} is missing or unreadable: rewriting it from "
            f"{resumed_from}."
        )
        self.checkpointer.save("model_final")

    def state_dict(self):
        """Iteration, hook states (LR scheduler) and the step's state (optimizer momentum,
        AMP scaler). detectron2 v0.6 leaves the last one out, so its resume restarts the
        momentum from zero."""
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning(
                "The checkpoint has no optimizer state (written by detectron2 v0.6's "
                "DefaultTrainer?): the optimizer restarts from zero momentum."
            )

    def build_hooks(self):
        """detectron2's default hooks (IterationTimer, LRScheduler, PreciseBN, periodic
        checkpoints, evaluation, writers), with the writers run every SOLVER.LOG_PERIOD."""
        ret = super().build_hooks()
        for hook in ret:
            if isinstance(hook, hooks.PeriodicWriter):
                hook._period = self.cfg.SOLVER.LOG_PERIOD  # v0.6 has no option: it writes 20
        return ret

    @classmethod
    def build_optimizer(cls, cfg, model):
        """:func:`lgdkd.engine.optim.build_optimizer`: detectron2's SGD, a trainable teacher's
        own param groups, and gradient clipping that skips parameters without a gradient."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        """A :class:`ResumableTrainLoader` over lgdkd.data's training dicts and checked mapper,
        starting at iteration 0 (``resume_or_load`` moves the start)."""
        return ResumableTrainLoader(
            cfg,
            dataset=lgdkd_data.get_train_dataset_dicts(cfg),
            mapper=lgdkd_data.CheckedDatasetMapper(cfg, True),
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return lgdkd_data.build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCOEvaluator or PascalVOCDetectionEvaluator per TEST.EVALUATOR ("auto": by the
        data set's ``evaluator_type`` metadata). COCO results go to
        ``output_folder`` (default OUTPUT_DIR/inference/<dataset>).

        COCO evaluation reads the ground truth with the training rule's boxes
        (:func:`lgdkd.data.evaluation_ground_truth`: the set's own json when the rule changes
        nothing, else a sanitised copy in ``output_folder``); ``output_folder``/
        ``ground_truth.json`` names that file next to the detections
        (``coco_instances_results.json``), for tools that recompute AP per image. VOC
        evaluation reads the XML boxes as VOC's devkit does (datasets/README.md, "Which boxes
        are used")."""
        kind = cfg.TEST.EVALUATOR.lower()
        if kind == "auto":
            found = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
            kind = _EVALUATOR_TYPES.get(found)
            if kind is None:
                raise ValueError(
                    f"TEST.EVALUATOR 'auto': data set {dataset_name!r} has evaluator_type "
                    f"{found!r}; set TEST.EVALUATOR to 'coco' or 'voc'."
                )
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if kind == "coco":
            truth = lgdkd_data.evaluation_ground_truth(dataset_name, output_folder)
            _record_ground_truth(output_folder, dataset_name, truth.json_file)
            return COCOEvaluator(truth.evaluator_name, output_dir=output_folder)
        if kind == "voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        raise ValueError(f"TEST.EVALUATOR is {cfg.TEST.EVALUATOR!r}; expected auto, coco or voc.")

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation of ``model`` on DATASETS.TEST, then of its teacher when
        MODEL.DISTILL.TEACHER.EVAL and the model has one (``teacher_for_evaluation()``).

        Returns:
            the student's results as detectron2 returns them, plus ``"teacher/<dataset>"``
            entries for the teacher.
        """
        results = super().test(cfg, model, evaluators)
        if not cfg.MODEL.DISTILL.TEACHER.EVAL:
            return results
        teacher_fn = getattr(unwrap_model(model), "teacher_for_evaluation", None)
        teacher = teacher_fn() if teacher_fn is not None else None
        if teacher is None:
            logger.warning("MODEL.DISTILL.TEACHER.EVAL is set but the model has no teacher.")
            return results
        results = OrderedDict(results)
        results.update(cls.test_teacher(cfg, teacher))
        return results

    @classmethod
    def test_teacher(cls, cfg, teacher):
        """Evaluate ``teacher`` on DATASETS.TEST with the student's test loaders.

        Returns:
            ``{"teacher/<dataset>": results}``; COCO files under OUTPUT_DIR/inference/teacher.
        """
        results = OrderedDict()
        for dataset_name in cfg.DATASETS.TEST:
            folder = os.path.join(cfg.OUTPUT_DIR, "inference", "teacher", dataset_name)
            evaluator = cls.build_evaluator(cfg, dataset_name, output_folder=folder)
            if getattr(teacher, "needs_annotations", False):
                loader = lgdkd_data.build_test_loader(cfg, dataset_name, keep_annotations=True)
            else:
                loader = cls.build_test_loader(cfg, dataset_name)
            result = inference_on_dataset(teacher, loader, evaluator)
            results[f"teacher/{dataset_name}"] = result
            if comm.is_main_process():
                note = getattr(teacher, "evaluation_note", "")
                logger.info(
                    f"Evaluation results of the TEACHER on {dataset_name} in csv format"
                    + (f" ({note})" if note else "")
                    + ":"
                )
                print_csv_format(result)
        return results


def _record_ground_truth(output_folder: str, dataset_name: str, json_file: str) -> None:
    """Write ``output_folder``/ground_truth.json: which COCO json the detections of this
    folder are evaluated against (main process only; written to a temp file, then renamed)."""
    if not comm.is_main_process():
        return
    os.makedirs(output_folder, exist_ok=True)
    path = os.path.join(output_folder, GROUND_TRUTH_RECORD)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"dataset": dataset_name, "json_file": os.path.abspath(json_file)}, f)
    os.replace(tmp, path)


class ModuleAttributes:
    """Checkpointable training state that modules keep in plain attributes.

    detectron2's RetinaNet normalises its losses by an exponential moving average of the
    number of foreground anchors, kept in the float ``loss_normalizer``, not in a buffer: the
    model's state dict misses it and a resumed run would restart it from 100. This object
    saves such attributes (``names``) of every sub-module beside the model.
    """

    def __init__(self, model, names=("loss_normalizer",)):
        self._model = model
        self._names = names

    def state_dict(self):
        return {
            f"{prefix}:{name}": getattr(module, name)
            for prefix, module in self._model.named_modules()
            for name in self._names
            if isinstance(getattr(module, name, None), (int, float))
        }

    def load_state_dict(self, state):
        modules = dict(self._model.named_modules())
        for key, value in state.items():
            prefix, name = key.rsplit(":", 1)
            if prefix in modules and name in self._names:
                setattr(modules[prefix], name, value)


def _with_fixed_seed(cfg):
    """``cfg`` with SEED >= 0: a seed shared by all processes is picked for SEED < 0."""
    if cfg.SEED >= 0:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SEED = int(comm.shared_random_seed())
    logger.warning(
        f"SEED < 0: this run uses the seed {cfg.SEED}, which --resume cannot know. Start runs "
        "through lgdkd.engine.setup, which saves the seed in config.yaml."
    )
    if frozen:
        cfg.freeze()
    return cfg
