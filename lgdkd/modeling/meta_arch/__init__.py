from . import fcos, gfl  # noqa: F401  (register FCOS and GFL in META_ARCH_REGISTRY)
from .adapters import STUDENT_ADAPTER_REGISTRY, StudentAdapter, build_adapter  # noqa: F401
from .distillation import DistillationDetector, build_student  # noqa: F401
