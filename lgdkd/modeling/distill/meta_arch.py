"""The one distillation meta-architecture: a stock student plus pluggable teacher, assigner and
distillers, driven through a stateless student adapter."""

import contextlib
import logging
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import nn

from ...checkpoint import load_strict
from .adapters import build_adapter, num_classes_of
from .registries import build_assigner, build_distillers, build_teacher, get_from_registry
from .schedule import DistillSchedule

__all__ = ["DistillationDetector", "build_student"]

logger = logging.getLogger(__name__)


def build_student(cfg) -> nn.Module:
    """The student detector: MODEL.DISTILL.STUDENT_META_ARCHITECTURE built from ``cfg``."""
    name = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    if name == "DistillationDetector":
        raise ValueError("MODEL.DISTILL.STUDENT_META_ARCHITECTURE cannot be DistillationDetector.")
    cls = get_from_registry(META_ARCH_REGISTRY, name, "MODEL.DISTILL.STUDENT_META_ARCHITECTURE")
    scfg = cfg.clone()
    scfg.defrost()
    scfg.MODEL.META_ARCHITECTURE = name
    scfg.freeze()
    return cls(scfg)


@META_ARCH_REGISTRY.register()
class DistillationDetector(nn.Module):
    """Trains ``student`` with its own losses plus distillation losses; infers as ``student``
    (or as a co-trained teacher, MODEL.DISTILL.EVAL_NETWORK).

    One training iteration (``forward`` in training mode):

    1. ``adapter.preprocess`` + ``adapter.run`` on the student -> student DetectorOutputs;
    2. if the schedule's weight w > 0 at this iteration, or the teacher is ``trainable``:
       ``teacher(batched_inputs, student)`` (frozen teachers run without gradient); if w > 0,
       ``assigner(student, teacher)``;
    3. the student's targets: the assigner's ``Assignment.targets`` when it gives some (LAD,
       CoLAD), else its own (``adapter.targets``), set as ``student.targets``;
    4. ``adapter.task_losses``: the student's own detection losses on those targets, times
       MODEL.DISTILL.TASK_LOSS_WEIGHT (with 0 they are computed without gradient, for their
       side effects: a running loss normaliser, logged assignment statistics, and left out);
       a trainable teacher's own losses, ``teacher.losses(student_model, adapter, student,
       teacher, assignment)``, every iteration (they train the teacher, not the student's
       distillation);
    5. each distiller's losses, multiplied by w (``student.targets`` are there for those that
       read the assignment, as LD). When w = 0 a distiller with
       ``trains_when_off`` runs on detached student features at full weight (only its own
       parameters learn, as LGD's adapter does in its off phases); any other is skipped and
       its losses are logged as 0.

    State-dict layout: ``student.*`` (exported alone by lgdkd.export), ``teacher.*``,
    ``assigner.*``, ``distillers.<i>.*``.
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: Optional[nn.Module] = None,
        assigner: Optional[nn.Module] = None,
        distillers: List[nn.Module] = (),
        schedule: DistillSchedule = DistillSchedule(),
        task_loss_weight: float = 1.0,
        eval_network: str = "student",
    ):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.assigner = assigner
        self.distillers = nn.ModuleList(distillers)
        self.schedule = schedule
        self.task_loss_weight = task_loss_weight
        if eval_network not in ("student", "teacher"):
            raise ValueError(
                f"MODEL.DISTILL.EVAL_NETWORK = {eval_network!r}; valid: student, teacher"
            )
        if eval_network == "teacher" and not (teacher is not None and teacher.trainable):
            raise ValueError(
                "MODEL.DISTILL.EVAL_NETWORK 'teacher' needs a teacher trained with the student "
                "(e.g. MODEL.DISTILL.TEACHER.NAME 'CoLearningTeacher'); a frozen teacher is "
                "evaluated with MODEL.DISTILL.TEACHER.EVAL."
            )
        self.eval_network = eval_network
        self._adapter = build_adapter(student)
        self._taps = _student_taps(student, [assigner, *distillers])

    @classmethod
    def from_config(cls, cfg):
        student = build_student(cfg)
        init = cfg.MODEL.DISTILL.STUDENT_INIT_WEIGHTS
        if init:
            load_strict(
                student,
                init,
                what="student initial weights (MODEL.DISTILL.STUDENT_INIT_WEIGHTS)",
                strip_prefix="student.",
            )
            logger.info(f"Student initialised from {init}")
        adapter = build_adapter(student)
        teacher = build_teacher(cfg, student)
        if teacher is not None:
            s_cls, t_cls = num_classes_of(student), teacher.num_classes
            if s_cls >= 0 and t_cls >= 0 and s_cls != t_cls:
                raise ValueError(
                    f"Teacher predicts {t_cls} classes (MODEL.DISTILL.TEACHER.CONFIG_FILE = "
                    f"{cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE!r}) but the student "
                    f"({cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE}) predicts {s_cls}: a "
                    "teacher trained on another label set cannot teach this student."
                )
        distillers = build_distillers(cfg, student, teacher)
        assigner = build_assigner(cfg, student, teacher)
        if teacher is not None:
            # an assigner may read the teacher's predictions (e.g. label assignment)
            teacher.require_predictions(
                any(c.needs_teacher_predictions for c in [assigner, *distillers] if c is not None)
            )
        if teacher is not None and not distillers and cfg.MODEL.DISTILL.ASSIGNER.NAME == "":
            raise ValueError(
                "A teacher is configured (MODEL.DISTILL.TEACHER.NAME) but nothing uses it: set "
                "MODEL.DISTILL.DISTILLERS or MODEL.DISTILL.ASSIGNER.NAME."
            )
        logger.info(
            f"DistillationDetector: student {type(student).__name__} "
            f"({type(adapter).__name__}), teacher "
            f"{type(teacher).__name__ if teacher is not None else None}, distillers "
            f"{list(cfg.MODEL.DISTILL.DISTILLERS)}"
        )
        return {
            "student": student,
            "teacher": teacher,
            "assigner": assigner,
            "distillers": distillers,
            "schedule": DistillSchedule.from_config(cfg),
            "task_loss_weight": cfg.MODEL.DISTILL.TASK_LOSS_WEIGHT,
            "eval_network": cfg.MODEL.DISTILL.EVAL_NETWORK,
        }

    @property
    def device(self):
        return next(self.student.parameters()).device

    @property
    def _frozen_teacher(self) -> bool:
        return self.teacher is not None and not self.teacher.trainable

    def train(self, mode: bool = True):
        super().train(mode)
        if self._frozen_teacher:
            self.teacher.train(False)
        return self

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            if self.eval_network == "teacher":
                return self.teacher.detector_for_evaluation(student=self.student)(batched_inputs)
            return self.student(batched_inputs)
        iteration = get_event_storage().iter
        weight = self.schedule.distill_weight(iteration)

        images, gt_instances = self._adapter.preprocess(self.student, batched_inputs)
        with _recorded_outputs(self._taps) as taps:
            student_out = self._adapter.run(self.student, images, gt_instances)
        student_out.extras.update(taps)
        teacher_out, assignment = None, None
        trainable_teacher = self.teacher is not None and self.teacher.trainable
        if self.teacher is not None and (weight > 0 or trainable_teacher):
            teacher_out = self.teacher(batched_inputs, student_out)
        if weight > 0 and self.assigner is not None:
            assignment = self.assigner(student_out, teacher_out)

        if assignment is not None and assignment.targets is not None:
            student_out.targets = assignment.targets
        else:
            student_out.targets = self._adapter.targets(self.student, student_out)

        losses = {}
        if self.task_loss_weight != 0:
            task = self._adapter.task_losses(self.student, student_out)
            losses.update({k: v * self.task_loss_weight for k, v in task.items()})
        else:  # for their side effects (a running normaliser, logged statistics) only
            with torch.no_grad():
                self._adapter.task_losses(self.student, student_out)

        def add(out):
            for k in out:
                if k in losses:
                    raise KeyError(f"Two components return the loss {k!r}.")
            losses.update(out)

        if trainable_teacher:
            add(
                self.teacher.losses(
                    self.student, self._adapter, student_out, teacher_out, assignment
                )
            )
        detached = None
        for distiller in self.distillers:
            if weight > 0:
                out = {
                    k: v * weight
                    for k, v in distiller(student_out, teacher_out, assignment).items()
                }
            elif distiller.trains_when_off and teacher_out is not None:
                if detached is None:
                    detached = student_out.with_detached_features()
                out = distiller(detached, teacher_out, assignment)
            else:  # logged as 0 so that every iteration has the same keys
                out = {k: images.tensor.new_zeros(()) for k in distiller.loss_names}
            add(out)
        return losses

    def frozen_parameters(self, iteration: int) -> List[nn.Parameter]:
        """Parameters that must get no update at ``iteration`` (the trainer drops their grads):
        the student's bottom-up backbone while MODEL.DISTILL.SCHEDULE.FREEZE_BACKBONE_ITERS."""
        if not self.schedule.backbone_frozen(iteration):
            return []
        backbone = self.student.backbone
        return list(getattr(backbone, "bottom_up", backbone).parameters())

    def frozen_weight_files(self) -> Dict[str, str]:
        """``{state-dict prefix: weights file}`` of the parts loaded from a file of their own
        and never trained: a frozen pretrained teacher (``"teacher."``). The run's checkpoints
        leave them out and keep the file's fingerprint instead (lgdkd.engine.checkpointer)."""
        if not self._frozen_teacher or not self.teacher.weights_file:
            return {}
        return {"teacher.": self.teacher.weights_file}

    def teacher_for_evaluation(self) -> Optional[nn.Module]:
        """The teacher as a detector for ``inference_on_dataset`` (None when it has none)."""
        if self.teacher is None:
            return None
        return self.teacher.detector_for_evaluation(student=self.student)


def _student_taps(student: nn.Module, roles) -> Dict[str, nn.Module]:
    """``{name: student sub-module}`` of the roles' ``student_taps``; refuses a path the student
    lacks and one name for two paths."""
    paths: Dict[str, str] = {}
    modules: Dict[str, nn.Module] = {}
    for role in roles:
        if role is None:
            continue
        for name, path in role.student_taps.items():
            if paths.get(name, path) != path:
                raise ValueError(
                    f"{type(role).__name__} records student output {name!r} from {path!r}, "
                    f"another role from {paths[name]!r}: rename one of them."
                )
            try:
                modules[name] = student.get_submodule(path)
            except AttributeError:
                raise ValueError(
                    f"{type(role).__name__} reads the output of the student's {path!r}, which "
                    f"{type(student).__name__} does not have."
                ) from None
            paths[name] = path
    return modules


@contextlib.contextmanager
def _recorded_outputs(modules: Dict[str, nn.Module]):
    """Within the block, every output of each module is appended to ``recorded[name]``."""
    recorded: Dict[str, list] = {name: [] for name in modules}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: recorded[name].append(out))
        for name, m in modules.items()
    ]
    try:
        yield recorded
    finally:
        for h in handles:
            h.remove()
