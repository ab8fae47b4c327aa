"""The distillation step: the meta-architecture (``DistillationDetector``), the student adapters,
the roles' base classes and registries, the payloads the roles exchange and the schedule."""

from .adapters import STUDENT_ADAPTER_REGISTRY, StudentAdapter, build_adapter  # noqa: F401
from .meta_arch import DistillationDetector, build_student  # noqa: F401
from .outputs import Assignment, DetectorOutputs  # noqa: F401
from .registries import (  # noqa: F401
    ASSIGNER_REGISTRY,
    DISTILLER_REGISTRY,
    TEACHER_REGISTRY,
    build_assigner,
    build_distillers,
    build_teacher,
)
from .roles import Assigner, Borrowed, Distiller, Teacher  # noqa: F401
from .schedule import DistillSchedule, LossSchedule  # noqa: F401
