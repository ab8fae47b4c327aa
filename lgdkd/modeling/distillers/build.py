"""Distiller registry: subclasses of :class:`lgdkd.modeling.roles.Distiller`, built as
``cls(cfg, student=student, teacher=teacher)`` (see that module for the protocol and the
defaults)."""

from detectron2.utils.registry import Registry

from ..registry_utils import get_from_registry, role_class
from ..roles import Distiller

__all__ = ["DISTILLER_REGISTRY", "build_distillers"]

DISTILLER_REGISTRY = Registry("DISTILLER")
DISTILLER_REGISTRY.__doc__ = __doc__


def build_distillers(cfg, student, teacher):
    """One distiller per name of ``MODEL.DISTILL.DISTILLERS``, in order, for the built
    ``student`` and ``teacher`` (a Teacher or None)."""
    out = []
    for name in cfg.MODEL.DISTILL.DISTILLERS:
        key = "MODEL.DISTILL.DISTILLERS"
        cls = role_class(get_from_registry(DISTILLER_REGISTRY, name, key), Distiller, key)
        if cls.needs_teacher and teacher is None:
            raise ValueError(
                f"Distiller {name} needs a teacher but MODEL.DISTILL.TEACHER.NAME is empty."
            )
        out.append(cls(cfg, student=student, teacher=teacher))
    return out
