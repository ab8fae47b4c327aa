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
from .voting_nms import cluster_nms, voting_cluster_diou_nms  # noqa: F401
