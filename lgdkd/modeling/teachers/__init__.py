from ..distill.registries import TEACHER_REGISTRY, build_teacher  # noqa: F401
from .co_learning import CoLearningTeacher  # noqa: F401
from .label_guided import LabelGuidedTeacher  # noqa: F401
from .pretrained import PretrainedTeacher  # noqa: F401
