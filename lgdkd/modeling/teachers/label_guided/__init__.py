"""LGD's implicit teacher (Zhang et al., AAAI 2022; official code megvii-research/LGD).

Modules: ``labels`` (descriptors and the cells each box covers), ``encoder`` (the PointNet
label encoder), ``teacher`` (``LabelGuidedTeacher``: appearance pooling, relation adapter,
knowledge mapper, refinement) and ``oracle`` (the teacher's maps through the student's head,
for evaluation).
"""

from .encoder import LabelEncoder, TNet
from .labels import box_cell_masks, label_descriptors
from .oracle import LGDOracleDetector
from .teacher import LabelGuidedTeacher

__all__ = [
    "LabelGuidedTeacher",
    "LGDOracleDetector",
    "LabelEncoder",
    "TNet",
    "box_cell_masks",
    "label_descriptors",
]
