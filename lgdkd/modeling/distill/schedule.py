"""Loss-weight schedules as pure functions of the iteration, so ``--resume`` is exact.

One primitive, :class:`LossSchedule` (start, stop, linear warm-up), gives every loss weight
that changes during training: the distillation weight of the whole run (:class:`DistillSchedule`,
MODEL.DISTILL.SCHEDULE) and a method's own ramps (HEAD's AKD / CKD / assistant warm-ups and
CKD's early stop, TF-HEAD's). One warm-up convention: the weight is 0 at the start iteration
and grows linearly to 1 over ``warmup`` iterations (the official HEAD code's todd
``WarmupScheduler``: ``min(iteration / warmup, 1)``).
"""

from dataclasses import dataclass

__all__ = ["DistillSchedule", "LossSchedule"]


@dataclass(frozen=True)
class LossSchedule:
    """``weight(iteration)``: 0 before ``start`` and from ``stop`` on (``stop`` < 0: never
    stops; ``stop`` <= ``start``: always 0); in between ``min((iteration - start) / warmup,
    1)``, or 1 when ``warmup`` is 0."""

    start: int = 0
    stop: int = -1
    warmup: int = 0

    def __post_init__(self):
        if self.start < 0 or self.warmup < 0:
            raise ValueError(f"Negative start or warm-up in {self}")

    def weight(self, iteration: int) -> float:
        if iteration < self.start or (0 <= self.stop <= iteration):
            return 0.0
        if self.warmup == 0:
            return 1.0
        return min((iteration - self.start) / self.warmup, 1.0)


@dataclass(frozen=True)
class DistillSchedule:
    """When distillation runs and how much it weighs (MODEL.DISTILL.SCHEDULE).

    Attributes:
        start_iter: distillation losses are computed from this iteration on (from the next one
            with a warm-up, whose weight is 0 at ``start_iter``).
        stop_iter: ... and no longer from this iteration on (< 0: never stops).
        warmup_iters: the weight grows linearly from 0 at ``start_iter`` to 1 at
            ``start_iter + warmup_iters`` (:class:`LossSchedule`; 0: full weight at once).
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
        object.__setattr__(
            self, "_weight", LossSchedule(self.start_iter, self.stop_iter, self.warmup_iters)
        )

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.DISTILL.SCHEDULE
        return cls(s.START_ITER, s.STOP_ITER, s.WARMUP_ITERS, s.FREEZE_BACKBONE_ITERS)

    def distill_weight(self, iteration: int) -> float:
        """Multiplier of every distillation loss at ``iteration`` (0 = not computed)."""
        return self._weight.weight(iteration)

    def backbone_frozen(self, iteration: int) -> bool:
        return iteration < self.freeze_backbone_iters
