"""Distiller registry.

A distiller turns what the student and the teacher computed into weighted losses::

    distiller(student: DetectorOutputs, teacher: Optional[DetectorOutputs],
              assignment: Optional[Assignment]) -> Dict[str, Tensor]

Keys are ``loss_distill_<what>``; values are scalars already multiplied by the distiller's own
loss weight (the schedule's weight is applied by the meta-architecture). Every loss is
normalised so that it does not grow with the number of images per worker.

A distiller class is built as ``cls(cfg, student_shape, teacher_shape)`` where the shapes are
``Dict[str, ShapeSpec]`` of the student's and the teacher's features (``teacher_shape`` is None
without a teacher); it must refuse, at build time, a teacher whose levels, strides or channels
it cannot use, naming both sides. Class attributes: ``needs_teacher`` (whether it requires a
teacher) and ``loss_names`` (the keys it returns, logged as 0 while the schedule has
distillation off); optionally ``needs_teacher_predictions`` (default True: the teacher runs
its detection head; False lets it stop after its backbone).
Optionally ``check_models(student, teacher)``: called once after building, to refuse at build
time a teacher or student the distiller cannot use (detector type, reg_max, classes, ...).
Optionally ``trains_when_off`` (default False): while the schedule has distillation off, the
distiller still runs, at full weight, on detached student features (only its own parameters
learn; LGD's adapter).
"""

from detectron2.utils.registry import Registry

from ..registry_utils import get_from_registry

__all__ = ["DISTILLER_REGISTRY", "build_distillers"]

DISTILLER_REGISTRY = Registry("DISTILLER")
DISTILLER_REGISTRY.__doc__ = __doc__


def build_distillers(cfg, student_shape, teacher_shape):
    """One distiller per name of ``MODEL.DISTILL.DISTILLERS``, in order."""
    out = []
    for name in cfg.MODEL.DISTILL.DISTILLERS:
        cls = get_from_registry(DISTILLER_REGISTRY, name, "MODEL.DISTILL.DISTILLERS")
        if getattr(cls, "needs_teacher", True) and teacher_shape is None:
            raise ValueError(
                f"Distiller {name} needs a teacher but MODEL.DISTILL.TEACHER.NAME is empty."
            )
        out.append(cls(cfg, student_shape, teacher_shape))
    return out
