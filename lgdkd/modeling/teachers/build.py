"""Teacher registry: subclasses of :class:`lgdkd.modeling.roles.Teacher`, built as
``cls(cfg, student=student)`` (see that module for the protocol and the defaults)."""

from detectron2.utils.registry import Registry

from ..registry_utils import get_from_registry, role_class
from ..roles import Teacher

__all__ = ["TEACHER_REGISTRY", "build_teacher"]

TEACHER_REGISTRY = Registry("TEACHER")
TEACHER_REGISTRY.__doc__ = __doc__


def build_teacher(cfg, student):
    """Build ``MODEL.DISTILL.TEACHER.NAME`` for ``student`` (None when the name is "")."""
    name = cfg.MODEL.DISTILL.TEACHER.NAME
    if not name:
        return None
    key = "MODEL.DISTILL.TEACHER.NAME"
    cls = role_class(get_from_registry(TEACHER_REGISTRY, name, key), Teacher, key)
    return cls(cfg, student=student)
