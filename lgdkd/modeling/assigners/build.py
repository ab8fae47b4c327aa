"""Assigner registry: subclasses of :class:`lgdkd.modeling.roles.Assigner`, built as
``cls(cfg, student=student, teacher=teacher)`` (see that module for the protocol and the
defaults)."""

from detectron2.utils.registry import Registry

from ..registry_utils import get_from_registry, role_class
from ..roles import Assigner

__all__ = ["ASSIGNER_REGISTRY", "build_assigner"]

ASSIGNER_REGISTRY = Registry("ASSIGNER")
ASSIGNER_REGISTRY.__doc__ = __doc__


def build_assigner(cfg, student, teacher):
    """Build ``MODEL.DISTILL.ASSIGNER.NAME`` for the built ``student`` and ``teacher`` (a
    Teacher or None); None when the name is ""."""
    name = cfg.MODEL.DISTILL.ASSIGNER.NAME
    if not name:
        return None
    key = "MODEL.DISTILL.ASSIGNER.NAME"
    cls = role_class(get_from_registry(ASSIGNER_REGISTRY, name, key), Assigner, key)
    return cls(cfg, student=student, teacher=teacher)
