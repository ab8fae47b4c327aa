"""Statistics of a seed study: two arms (a baseline and a method) trained with the same seeds.

The primary analysis is paired: each seed fixes the data order and the initialisation of both
arms, so the per-seed differences ``Δ_s = arm_s − baseline_s`` carry the method's effect with
the seed-to-seed noise shared by the two arms removed. Their mean comes with a Student-t
confidence interval on ``n − 1`` degrees of freedom. Welch's unpaired t-test is reported as a
secondary figure, and the pooled seed standard deviation of the two arms
(``sqrt((s_arm² + s_baseline²) / 2)``) sets the size an effect must have to count.

Verdict (:func:`verdict`), with ``d`` the mean Δ, ``[lo, hi]`` its 95 % CI and ``σ`` the pooled
std:

* "gain shown": ``d > 2σ`` and ``lo > 0``;
* "loss shown": ``d < −2σ`` and ``hi < 0``;
* "inconclusive": the CI excludes 0 but ``|d| ≤ 2σ`` (a consistent shift smaller than the
  seed spread);
* "not shown": the CI contains 0;
* "not shown (one seed)": ``n = 1``, no interval.

The t distribution is computed here (regularised incomplete beta function by its continued
fraction; quantiles by bisection), without SciPy.
"""

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

__all__ = [
    "PairedComparison",
    "paired_comparison",
    "pooled_std",
    "regularized_incomplete_beta",
    "t_cdf",
    "t_quantile",
    "verdict",
    "welch_p",
]

GAIN, LOSS, INCONCLUSIVE, NOT_SHOWN = "gain shown", "loss shown", "inconclusive", "not shown"
ONE_SEED = "not shown (one seed)"


# --------------------------------------------------------------------------------------------
# Student's t distribution
# --------------------------------------------------------------------------------------------
def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"incomplete beta needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs 0 <= x <= 1, got x={x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def _two_sided_tail(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for T ~ t(df)."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` > 0 degrees of freedom (not necessarily whole)."""
    if not df > 0:
        raise ValueError(f"t distribution needs df > 0, got {df}")
    tail = 0.5 * _two_sided_tail(t, df)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom, by bisection on
    :func:`t_cdf` (absolute error below 1e-10); e.g. ``t_quantile(0.975, 2)`` = 4.3027."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t quantile needs 0 < p < 1, got {p}")
    if not df > 0:
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------
# Two arms
# --------------------------------------------------------------------------------------------
def welch_p(a, b) -> Optional[float]:
    """Two-sided p-value of Welch's unpaired t-test of equal means; None when an arm has
    fewer than two values. Two arms without any spread give 1 (equal means) or 0."""
    a, b = list(a), list(b)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a), statistics.variance(b)
    diff = statistics.mean(a) - statistics.mean(b)
    se2 = va / len(a) + vb / len(b)
    if se2 == 0:
        return 1.0 if diff == 0 else 0.0
    t = diff / math.sqrt(se2)
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    return _two_sided_tail(t, df)


def pooled_std(a, b) -> Optional[float]:
    """The seed spread of two arms: sqrt of the mean of their sample variances; None when an
    arm has fewer than two values."""
    a, b = list(a), list(b)
    if len(a) < 2 or len(b) < 2:
        return None
    return math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2.0)


def verdict(mean_delta: float, ci: Optional[Tuple[float, float]], pooled: Optional[float]) -> str:
    """The verdict rule of the module docstring ("gain shown", "loss shown", "inconclusive",
    "not shown", or "not shown (one seed)" when there is no interval)."""
    if ci is None or pooled is None:
        return ONE_SEED
    lo, hi = ci
    excludes_zero = lo > 0 or hi < 0
    if mean_delta > 2 * pooled and lo > 0:
        return GAIN
    if mean_delta < -2 * pooled and hi < 0:
        return LOSS
    if excludes_zero:
        return INCONCLUSIVE
    return NOT_SHOWN


@dataclass(frozen=True)
class PairedComparison:
    """An arm against the baseline over the same seeds (see the module docstring).

    Attributes:
        seeds: the seeds, sorted; ``baseline``, ``arm`` and ``deltas`` follow this order.
        baseline, arm: the metric per seed.
        deltas: ``arm − baseline`` per seed.
        mean_delta: mean of ``deltas``.
        std_delta: sample std of ``deltas`` (None for one seed).
        ci: ``confidence`` interval of the mean Δ (None for one seed).
        confidence: the interval's level (0.95).
        welch_p: Welch's two-sided p-value (None for one seed).
        pooled_std: sqrt of the mean of the two arms' sample variances (None for one seed).
        verdict: see :func:`verdict`.
    """

    seeds: Tuple[int, ...]
    baseline: Tuple[float, ...]
    arm: Tuple[float, ...]
    deltas: Tuple[float, ...]
    mean_delta: float
    std_delta: Optional[float]
    ci: Optional[Tuple[float, float]]
    confidence: float
    welch_p: Optional[float]
    pooled_std: Optional[float]
    verdict: str

    @property
    def n(self) -> int:
        """The number of seeds."""
        return len(self.seeds)


def paired_comparison(
    baseline: Mapping[int, float], arm: Mapping[int, float], confidence: float = 0.95
) -> PairedComparison:
    """Compare ``arm`` with ``baseline``, both ``{seed: metric}``.

    Raises:
        ValueError: no seeds, the two arms were run with different seeds (the message
            names the seeds each has alone), or a value is NaN or infinite (named).
    """
    only_base = sorted(set(baseline) - set(arm))
    only_arm = sorted(set(arm) - set(baseline))
    if only_base or only_arm:
        raise ValueError(
            "a paired comparison needs the same seeds in both arms: seeds only in the baseline "
            f"{only_base}, only in the arm {only_arm} (baseline seeds {sorted(baseline)}, arm "
            f"seeds {sorted(arm)})"
        )
    if not baseline:
        raise ValueError("a paired comparison needs at least one seed")
    bad = sorted(
        f"{name} seed {k}: {v!r}"
        for name, values in (("baseline", baseline), ("arm", arm))
        for k, v in values.items()
        if not math.isfinite(float(v))
    )
    if bad:
        raise ValueError(f"a paired comparison needs finite values; got {', '.join(bad)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    seeds = tuple(sorted(baseline))
    base = tuple(float(baseline[s]) for s in seeds)
    values = tuple(float(arm[s]) for s in seeds)
    deltas = tuple(v - b for v, b in zip(values, base))
    n = len(seeds)
    mean_delta = statistics.mean(deltas)
    std_delta = ci = None
    if n >= 2:
        std_delta = statistics.stdev(deltas)
        half = t_quantile(0.5 + confidence / 2.0, n - 1) * std_delta / math.sqrt(n)
        ci = (mean_delta - half, mean_delta + half)
    pooled = pooled_std(values, base)
    return PairedComparison(
        seeds=seeds,
        baseline=base,
        arm=values,
        deltas=deltas,
        mean_delta=mean_delta,
        std_delta=std_delta,
        ci=ci,
        confidence=confidence,
        welch_p=welch_p(values, base),
        pooled_std=pooled,
        verdict=verdict(mean_delta, ci, pooled),
    )
