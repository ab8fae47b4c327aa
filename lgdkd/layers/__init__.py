"""Layers and loss functions shared by lgdkd's detectors and distillers."""

from .gfl_losses import (  # noqa: F401
    bbox2distance,
    class_kd_kl,
    distance2bbox,
    distribution_focal_loss,
    integral_distances,
    localization_kl,
    quality_focal_loss,
)
from .gmm import GMM1D, fit_gmm_1d  # noqa: F401
from .soft_label import focal_binary_kl  # noqa: F401
from .voting_nms import cluster_nms, paa_score_voting, voting_cluster_diou_nms  # noqa: F401
