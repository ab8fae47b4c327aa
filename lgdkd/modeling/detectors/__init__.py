"""Detectors the methods need beyond detectron2's, registered in its META_ARCH_REGISTRY: FCOS built
from yacs, GFocal (GFL) and PAA; and detectron2's RetinaNet with its loss normaliser taken over
all workers."""

from . import retinanet  # noqa: F401  (RetinaNet's loss normaliser over workers)
from .fcos import FCOS  # noqa: F401
from .gfl import GFL, GFLHead  # noqa: F401
from .paa import PAA, PAAHead, check_same_anchor_layout  # noqa: F401
