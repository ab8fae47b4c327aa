# register FCOS, GFL and PAA in META_ARCH_REGISTRY; RetinaNet's loss normaliser over workers
from . import fcos, gfl, paa, retinanet  # noqa: F401
from .adapters import STUDENT_ADAPTER_REGISTRY, StudentAdapter, build_adapter  # noqa: F401
from .distillation import DistillationDetector, build_student  # noqa: F401
