from . import fcos, gfl, paa  # noqa: F401  (register FCOS, GFL and PAA in META_ARCH_REGISTRY)
from .adapters import STUDENT_ADAPTER_REGISTRY, StudentAdapter, build_adapter  # noqa: F401
from .distillation import DistillationDetector, build_student  # noqa: F401
