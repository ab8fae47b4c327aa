from ..distill.registries import TEACHER_REGISTRY, build_teacher, import_role_modules  # noqa: F401
from .co_learning import CoLearningTeacher  # noqa: F401
from .label_guided import LabelGuidedTeacher  # noqa: F401
from .pretrained import PretrainedTeacher  # noqa: F401

import_role_modules(__name__, __path__)  # and every other module here
