from .build import ASSIGNER_REGISTRY, build_assigner  # noqa: F401
from .regions import GTBoxAssigner, gt_box_masks, valid_region_masks  # noqa: F401
