from .atss import (  # noqa: F401
    ATSSAssigner,
    ATSSResult,
    atss_assign,
    grid_anchors,
    pairwise_overlap,
    valid_anchor_mask,
    vlr_region,
)
from .build import ASSIGNER_REGISTRY, build_assigner  # noqa: F401
from .colad import CoLADAssigner  # noqa: F401
from .lad import LADAssigner  # noqa: F401
from .paa import paa_assign  # noqa: F401
from .regions import GTBoxAssigner, gt_box_masks, valid_region_masks  # noqa: F401
