"""Reading and judging results: seed statistics (:mod:`.stats`) and the sanity gates of a
distillation run against its baseline (:mod:`.gates`). Pure Python, no torch import, so the
tools and project scripts can use it before anything heavy is loaded."""

from .gates import (
    GateResult,
    collapse_gate,
    collapse_gate_for_runs,
    gap_gate,
    read_metrics,
    training_record,
)
from .stats import (
    PairedComparison,
    paired_comparison,
    pooled_std,
    t_cdf,
    t_quantile,
    verdict,
    welch_p,
)

__all__ = [
    "GateResult",
    "PairedComparison",
    "collapse_gate",
    "collapse_gate_for_runs",
    "gap_gate",
    "paired_comparison",
    "pooled_std",
    "read_metrics",
    "t_cdf",
    "t_quantile",
    "training_record",
    "verdict",
    "welch_p",
]
