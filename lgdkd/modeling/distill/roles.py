"""The three roles a distillation step plugs in, as base classes with their defaults.

One training iteration of :class:`~lgdkd.modeling.distill.meta_arch.DistillationDetector`
runs the student, then ``Teacher.forward``, ``Assigner.forward``, the student's task losses,
``Teacher.losses`` and every ``Distiller.forward``. Each role is registered in its registry
(``TEACHER_REGISTRY``, ``ASSIGNER_REGISTRY``, ``DISTILLER_REGISTRY``) and built once, with what
it needs, as::

    Teacher(cfg, student=student)
    Assigner(cfg, student=student, teacher=teacher)       # teacher: the built Teacher or None
    Distiller(cfg, student=student, teacher=teacher)

``student`` is the student detector. A role refuses, in its constructor, a student or teacher
it cannot use (naming both sides and the config key to change); it keeps the parts of the two
models it reads at every step in a :class:`Borrowed` (not sub-modules: they stay out of its
state dict, parameters and device moves; their owner has them). The meta-architecture reads
only the attributes defined here: a role overrides a default by setting the attribute.
Outputs of the student's own sub-modules reach a role through ``student_taps`` (forward hooks
around the student's forward), never by rewriting the student's forward.
"""

from typing import Dict, Optional, Tuple

from detectron2.layers import ShapeSpec
from torch import Tensor, nn

from .outputs import Assignment, DetectorOutputs

__all__ = ["Assigner", "Borrowed", "Distiller", "Teacher"]


class Borrowed:
    """Parts of the student or the teacher (modules, bound methods, values) that a role uses
    without owning them, e.g. ``Borrowed(anchor_generator=student.anchor_generator)``; read as
    attributes. Not an ``nn.Module``: a role that holds one does not register its parts."""

    def __init__(self, **parts):
        self.__dict__.update(parts)

    def __repr__(self):
        return f"Borrowed({', '.join(sorted(self.__dict__))})"


class Teacher(nn.Module):
    """Computes, each iteration, the maps (and predictions) the distillers compare the student
    with: ``forward(batched_inputs, student: DetectorOutputs) -> DetectorOutputs``, aligned with
    the student's (same padded size, same strides for the levels compared).

    Defaults, overridden where a teacher differs:

    * ``trainable = False``: frozen (eval mode, no gradient, out of the optimizer, left out of
      the run's checkpoints and reloaded from ``weights_file``); True: it trains with the
      student in its own param groups (MODEL.DISTILL.TEACHER.LR_FACTOR) and is checkpointed;
    * ``weights_file = ""``: the file a frozen teacher was loaded from (fingerprinted by the
      checkpoints of the run);
    * ``detector = None``: the detector whose outputs it returns, for the roles that read its
      parts (an implicit teacher has none);
    * ``num_classes = -1``: the classes it predicts (-1: no class notion);
    * ``config_file = ""``: the config it was built from, named in errors;
    * ``require_predictions(needed)``: told once the other roles are built whether any reads
      its head outputs; by default it runs its head anyway;
    * ``losses(student_model, adapter, student, teacher, assignment) -> {}``: a trainable
      teacher's own losses, added every iteration (``student.targets`` are the student's
      targets; ``assignment`` is the assigner's result, None when it did not run);
    * ``detector_for_evaluation(student=None) -> None``: a detector for
      ``inference_on_dataset`` (MODEL.DISTILL.TEACHER.EVAL, EVAL_NETWORK "teacher").
    """

    trainable = False
    weights_file = ""
    num_classes = -1
    config_file = ""

    @property
    def detector(self) -> Optional[nn.Module]:
        """The sub-module ``detector`` where the teacher has one (set ``self.detector``)."""
        return self._modules.get("detector")

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """The features it returns: name -> ShapeSpec(channels, stride)."""
        raise NotImplementedError

    def require_predictions(self, needed: bool) -> None:
        pass

    def losses(self, student_model, adapter, student, teacher, assignment) -> Dict[str, Tensor]:
        return {}

    def detector_for_evaluation(self, student: Optional[nn.Module] = None):
        return None


class Assigner(nn.Module):
    """Decides, each iteration, where distillation happens and, for label-assignment
    distillation, which targets the student trains on:
    ``forward(student: DetectorOutputs, teacher: Optional[DetectorOutputs]) -> Assignment``,
    with the ground truth in ``student.gt_instances``; without gradient unless it says so.

    Defaults: ``needs_teacher_predictions = True``: it reads the teacher's head outputs (when
    no role does, the teacher stops after its backbone); ``student_taps = {}``: as for a
    :class:`Distiller`.
    """

    needs_teacher_predictions = True
    student_taps: Dict[str, str] = {}

    def forward(self, student: DetectorOutputs, teacher: Optional[DetectorOutputs]) -> Assignment:
        raise NotImplementedError


class Distiller(nn.Module):
    """Turns what the student and the teacher computed into weighted losses:
    ``forward(student, teacher, assignment) -> {"loss_distill_<what>": scalar}``, each already
    multiplied by the distiller's own weight (the schedule's weight is applied by the
    meta-architecture) and normalised so that it does not grow with the images per worker.

    Defaults:

    * ``needs_teacher = True``: building without a teacher is refused;
    * ``needs_teacher_predictions = True``: it reads the teacher's head outputs;
    * ``trains_when_off = False``: while the schedule has distillation off it is skipped (its
      losses are logged as 0); True: it still runs, at full weight, on detached student
      features, so only its own parameters learn (LGD's adapter);
    * ``loss_names = ()``: the keys it returns, logged as 0 while it is skipped;
    * ``student_taps = {}``: outputs of the student's sub-modules it reads, as
      ``{name: module path}`` (e.g. ``{"cls_tower": "head.cls_subnet"}``): forward hooks
      record them during the student's forward, in call order (one per level for a head
      tower), as ``student.extras[name]``; a path the student lacks is refused at build time.
    """

    needs_teacher = True
    needs_teacher_predictions = True
    trains_when_off = False
    loss_names: Tuple[str, ...] = ()
    student_taps: Dict[str, str] = {}

    def forward(
        self,
        student: DetectorOutputs,
        teacher: Optional[DetectorOutputs],
        assignment: Optional[Assignment] = None,
    ) -> Dict[str, Tensor]:
        raise NotImplementedError
