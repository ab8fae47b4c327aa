"""Distillation schedules as pure functions of the iteration, so ``--resume`` is exact."""

from dataclasses import dataclass

__all__ = ["DistillSchedule", "ramp_weight"]


@dataclass(frozen=True)
class DistillSchedule:
    """When distillation runs and how much it weighs.

    Attributes:
        start_iter: distillation losses are computed from this iteration on.
        stop_iter: ... and no longer from this iteration on (< 0: never stops).
        warmup_iters: the weight grows linearly from 1/warmup_iters at ``start_iter`` to 1 at
            ``start_iter + warmup_iters - 1`` (0: full weight at once).
        freeze_backbone_iters: iterations (from 0) during which the student's bottom-up
            backbone gets no update.
    """

    start_iter: int = 0
    stop_iter: int = -1
    warmup_iters: int = 0
    freeze_backbone_iters: int = 0

    def __post_init__(self):
        if self.start_iter < 0 or self.warmup_iters < 0 or self.freeze_backbone_iters < 0:
            raise ValueError(f"Negative value in {self}")
        if 0 <= self.stop_iter <= self.start_iter:
            raise ValueError(
                f"MODEL.DISTILL.SCHEDULE.STOP_ITER ({self.stop_iter}) must be > START_ITER "
                f"({self.start_iter}), or < 0 to never stop."
            )

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.DISTILL.SCHEDULE
        return cls(s.START_ITER, s.STOP_ITER, s.WARMUP_ITERS, s.FREEZE_BACKBONE_ITERS)

    def distill_weight(self, iteration: int) -> float:
        """Multiplier of every distillation loss at ``iteration`` (0 = not computed)."""
        if iteration < self.start_iter or (0 <= self.stop_iter <= iteration):
            return 0.0
        if self.warmup_iters == 0:
            return 1.0
        return min(1.0, (iteration - self.start_iter + 1) / self.warmup_iters)

    def backbone_frozen(self, iteration: int) -> bool:
        return iteration < self.freeze_backbone_iters


def ramp_weight(value: float, warmup_iters: int, iteration: int, early_stop: int = -1) -> float:
    """``value * min(iteration / warmup_iters, 1)``: 0 at iteration 0, ``value`` from
    ``warmup_iters`` on (the official todd ``WarmupScheduler``); 0 from ``early_stop`` on
    (``early_stop`` < 0: never)."""
    if 0 <= early_stop <= iteration:
        return 0.0
    if warmup_iters <= 0:
        return float(value)
    return float(value) * min(iteration / warmup_iters, 1.0)
