"""Teacher registry.

A teacher is an ``nn.Module`` called once per training iteration as::

    teacher(batched_inputs: List[dict], student: DetectorOutputs) -> DetectorOutputs

``batched_inputs`` is the list the data loader produced (each teacher preprocesses it with its
own pixel statistics); ``student`` is what the student computed on the same batch (label-guided
teachers build their maps from it). The returned maps must align with the student's: same
padded image size, same strides for the levels a distiller compares.

Every teacher also provides:

* ``output_shape() -> Dict[str, ShapeSpec]``: the features it returns;
* ``num_classes: int``: classes it was trained on (-1 when it has no class notion);
* ``trainable: bool``: whether its parameters are optimised (own param group, see
  MODEL.DISTILL.TEACHER.LR_FACTOR);
* optionally ``require_predictions(needed: bool)``: called once the distillers and the
  assigner are built; with False the teacher may skip its detection head;
* ``detector_for_evaluation(student=None) -> Optional[nn.Module]``: a detector usable with
  ``inference_on_dataset`` (MODEL.DISTILL.TEACHER.EVAL), or None. If it has
  ``needs_annotations = True`` its test loader keeps the ground truth, and its
  ``evaluation_note`` is printed with its results;
* optionally, for a trainable teacher, ``losses(student_model, adapter, student, teacher) ->
  Dict[str, Tensor]``: its own training losses, added every iteration.
"""

from detectron2.utils.registry import Registry

from ..registry_utils import get_from_registry

__all__ = ["TEACHER_REGISTRY", "build_teacher"]

TEACHER_REGISTRY = Registry("TEACHER")
TEACHER_REGISTRY.__doc__ = __doc__


def build_teacher(cfg, student, student_shape):
    """Build ``MODEL.DISTILL.TEACHER.NAME`` for ``student`` (None when the name is "")."""
    name = cfg.MODEL.DISTILL.TEACHER.NAME
    if not name:
        return None
    cls = get_from_registry(TEACHER_REGISTRY, name, "MODEL.DISTILL.TEACHER.NAME")
    return cls(cfg, student=student, student_shape=student_shape)
