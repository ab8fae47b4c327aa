"""Label assignment as plain functions: ATSS, PAA's pre-assignment, costs, candidates and GMM
split, and what an assignment produces (``DenseTargets``)."""

from .atss import (  # noqa: F401
    ATSSResult,
    atss_assign,
    grid_anchors,
    pairwise_overlap,
    valid_anchor_mask,
    vlr_region,
)
from .paa import paa_assign  # noqa: F401
from .targets import AssignsTargets, DenseTargets  # noqa: F401
