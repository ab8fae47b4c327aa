from ..distill.registries import ASSIGNER_REGISTRY, build_assigner  # noqa: F401
from .atss import ATSSAssigner  # noqa: F401
from .colad import CoLADAssigner  # noqa: F401
from .lad import LADAssigner  # noqa: F401
from .regions import GTBoxAssigner, gt_box_masks, valid_region_masks  # noqa: F401
