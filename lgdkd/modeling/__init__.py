"""Importing this package registers every lgdkd component in detectron2's and lgdkd's
registries: detectors (FCOS, GFL, PAA, and DistillationDetector), backbones, teachers,
assigners, distillers and student adapters. It also makes detectron2's RetinaNet normalise its
losses by the positives of the whole batch over all workers
(:mod:`lgdkd.modeling.detectors.retinanet`).

Packages, each importing only those above it in this list:

* ``matching``: label assignment as plain functions (ATSS, PAA) and ``DenseTargets``;
* ``backbones``: timm backbones and FPNs for detectron2;
* ``detectors``: FCOS, GFL, PAA (and RetinaNet's normaliser);
* ``distill``: the meta-architecture, student adapters, role base classes and registries,
  payloads, schedule;
* ``teachers``, ``assigners``, ``distillers``: the roles, one registry each.
"""

from . import backbones, detectors  # noqa: F401
from .assigners import ASSIGNER_REGISTRY, build_assigner  # noqa: F401
from .distill import (  # noqa: F401
    STUDENT_ADAPTER_REGISTRY,
    Assignment,
    DetectorOutputs,
    DistillationDetector,
    DistillSchedule,
    build_adapter,
    build_student,
)
from .distillers import DISTILLER_REGISTRY, build_distillers  # noqa: F401
from .teachers import TEACHER_REGISTRY, build_teacher  # noqa: F401
