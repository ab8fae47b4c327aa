"""The registries of the three roles and their builders, and registry lookups with errors that
list the valid names.

Teachers, assigners and distillers are subclasses of :mod:`lgdkd.modeling.distill.roles`'
base classes, registered in ``TEACHER_REGISTRY``, ``ASSIGNER_REGISTRY`` and
``DISTILLER_REGISTRY`` and built as ``cls(cfg, student=student)`` (teachers) or
``cls(cfg, student=student, teacher=teacher)``.
"""

import difflib
import importlib
import pkgutil

from detectron2.utils.registry import Registry

from .roles import Assigner, Distiller, Teacher

__all__ = [
    "ASSIGNER_REGISTRY",
    "DISTILLER_REGISTRY",
    "TEACHER_REGISTRY",
    "build_assigner",
    "build_distillers",
    "build_teacher",
    "get_from_registry",
    "import_role_modules",
    "role_class",
]


def import_role_modules(package: str, path) -> None:
    """Import every module and sub-package of the role package ``package`` (its ``__name__``
    and ``__path__``), so that each registers its roles and config node: a new method is one
    new file in ``teachers/``, ``assigners/`` or ``distillers/``, with nothing else to edit."""
    for info in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{info.name}")


def get_from_registry(registry, name: str, key: str):
    """``registry.get(name)``, or a KeyError naming ``key``, the valid names and the closest."""
    if name in registry:
        return registry.get(name)
    names = sorted(n for n, _ in registry)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise KeyError(
        f"{key} = {name!r} is not registered. Valid names: "
        f"{', '.join(names) if names else '(none)'}.{hint}"
    )


def role_class(cls, base, key: str):
    """``cls`` if it subclasses the role ``base``, else a TypeError naming ``key``."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(
            f"{key}: {getattr(cls, '__name__', cls)!r} is registered but is not a subclass of "
            f"lgdkd.modeling.distill.roles.{base.__name__}; derive it from that class."
        )
    return cls


TEACHER_REGISTRY = Registry("TEACHER")
TEACHER_REGISTRY.__doc__ = "Teachers: subclasses of lgdkd.modeling.distill.roles.Teacher."


def build_teacher(cfg, student):
    """Build ``MODEL.DISTILL.TEACHER.NAME`` for ``student`` (None when the name is "")."""
    name = cfg.MODEL.DISTILL.TEACHER.NAME
    if not name:
        return None
    key = "MODEL.DISTILL.TEACHER.NAME"
    cls = role_class(get_from_registry(TEACHER_REGISTRY, name, key), Teacher, key)
    return cls(cfg, student=student)


ASSIGNER_REGISTRY = Registry("ASSIGNER")
ASSIGNER_REGISTRY.__doc__ = "Assigners: subclasses of lgdkd.modeling.distill.roles.Assigner."


def build_assigner(cfg, student, teacher):
    """Build ``MODEL.DISTILL.ASSIGNER.NAME`` for the built ``student`` and ``teacher`` (a
    Teacher or None); None when the name is ""."""
    name = cfg.MODEL.DISTILL.ASSIGNER.NAME
    if not name:
        return None
    key = "MODEL.DISTILL.ASSIGNER.NAME"
    cls = role_class(get_from_registry(ASSIGNER_REGISTRY, name, key), Assigner, key)
    return cls(cfg, student=student, teacher=teacher)


DISTILLER_REGISTRY = Registry("DISTILLER")
DISTILLER_REGISTRY.__doc__ = "Distillers: subclasses of lgdkd.modeling.distill.roles.Distiller."


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
