"""Importing this package registers every lgdkd component in detectron2's and lgdkd's
registries: meta-architectures (DistillationDetector, FCOS), backbones, teachers, assigners,
distillers and student adapters. It also makes detectron2's RetinaNet normalise its losses by
the positives of the whole batch over all workers (:mod:`lgdkd.modeling.meta_arch.retinanet`)."""

from . import backbones  # noqa: F401
from .assigners import ASSIGNER_REGISTRY, build_assigner  # noqa: F401
from .distillers import DISTILLER_REGISTRY, build_distillers  # noqa: F401
from .meta_arch import (  # noqa: F401
    STUDENT_ADAPTER_REGISTRY,
    DistillationDetector,
    build_adapter,
    build_student,
)
from .outputs import Assignment, DetectorOutputs  # noqa: F401
from .schedule import DistillSchedule  # noqa: F401
from .teachers import TEACHER_REGISTRY, build_teacher  # noqa: F401
