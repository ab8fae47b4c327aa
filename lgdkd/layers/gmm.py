"""Batched two-component 1-D Gaussian mixtures, fitted by EM on padded rows.

PAA (Kim & Lee, ECCV 2020) separates the candidate anchors of every ground-truth box by fitting
a two-component Gaussian mixture to their costs. The reference implementations fit one
``sklearn.mixture.GaussianMixture`` per box on the CPU. :func:`fit_gmm_1d` fits all boxes of a
batch at once on the tensors' device: rows of a padded (G, K) matrix, a mask for the valid
entries, float64, and a per-row convergence flag, so that each row stops exactly when sklearn
would have stopped on it alone.

The EM follows ``GaussianMixture(n_components=2, covariance_type="full", tol=1e-3,
reg_covar=1e-6, max_iter=100, weights_init=[.5, .5], means_init=[min, max],
precisions_init=[1, 1])``: iteration i computes the E-step (responsibilities and the mean
log-likelihood, the "lower bound"), then the M-step; the row has converged when its lower bound
changed by less than ``tol`` from iteration i - 1, and keeps the parameters of the M-step of
that iteration. Variances are the centred sums of squares (sklearn's "full" covariance), which
stay non-negative when the costs are nearly equal; sklearn's "diag" formula E[x^2] - mean^2 does
not in float32 and raises "ill-defined empirical covariance" (MMDetection issue #4152).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GMM1D", "fit_gmm_1d"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class GMM1D:
    """A fitted batch of 1-D two-component mixtures (G rows).

    Attributes:
        weights, means, variances: (G, 2) float64 parameters of each row's components.
        n_iter: (G,) EM iterations each row ran.
        converged: (G,) whether the row met the tolerance within ``max_iter``.
    """

    weights: Tensor
    means: Tensor
    variances: Tensor
    n_iter: Tensor
    converged: Tensor

    def weighted_log_prob(self, x: Tensor) -> Tensor:
        """(G, K, 2): log w_k + log N(x | mean_k, var_k) for every entry of ``x`` (G, K)."""
        x = x.to(self.means.dtype).unsqueeze(-1)
        var = self.variances.unsqueeze(1)
        log_gauss = -0.5 * (_LOG_2PI + torch.log(var) + (x - self.means.unsqueeze(1)) ** 2 / var)
        return log_gauss + torch.log(self.weights).unsqueeze(1)

    def predict(self, x: Tensor) -> Tensor:
        """(G, K) component index (0 or 1) of largest posterior; ties go to component 0, as
        numpy's argmax does in sklearn's ``predict``."""
        wlp = self.weighted_log_prob(x)
        return (wlp[..., 1] > wlp[..., 0]).long()

    def score_samples(self, x: Tensor) -> Tensor:
        """(G, K) log density of the mixture at each entry (sklearn's ``score_samples``)."""
        return torch.logsumexp(self.weighted_log_prob(x), dim=-1)


def fit_gmm_1d(
    x: Tensor,
    mask: Tensor,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    init_precision: float = 1.0,
) -> GMM1D:
    """Fit one two-component 1-D mixture per row of ``x``, on the entries where ``mask``.

    Args:
        x: (G, K) values; entries outside ``mask`` are ignored (any value).
        mask: (G, K) bool, at least one True per row that is to be fitted; rows without any
            valid entry are returned with their initial parameters and ``converged`` False.
        max_iter, tol, reg_covar: as sklearn's GaussianMixture.
        init_precision: initial precision (1 / variance) of both components.

    Returns:
        :class:`GMM1D`. Initialisation per row: weights (0.5, 0.5), means (min, max) of the
        row's valid entries, variances 1 / init_precision.
    """
    if x.shape != mask.shape or x.dim() != 2:
        raise ValueError(
            f"fit_gmm_1d: x {tuple(x.shape)} and mask {tuple(mask.shape)} must be "
            "the same (G, K) shape."
        )
    dtype = torch.float64
    x = x.to(dtype)
    mask = mask.bool()
    m = mask.to(dtype)
    g = x.shape[0]
    has = mask.any(dim=1)
    inf = torch.tensor(math.inf, dtype=dtype, device=x.device)
    lo = torch.where(mask, x, inf).amin(dim=1)
    hi = torch.where(mask, x, -inf).amax(dim=1)
    lo = torch.where(has, lo, torch.zeros_like(lo))
    hi = torch.where(has, hi, torch.zeros_like(hi))
    means = torch.stack([lo, hi], dim=1)
    weights = torch.full((g, 2), 0.5, dtype=dtype, device=x.device)
    variances = torch.full((g, 2), 1.0 / init_precision, dtype=dtype, device=x.device)
    xv = torch.where(mask, x, torch.zeros_like(x))  # padded entries: finite, weight 0
    count = m.sum(dim=1)
    active = has.clone()
    converged = torch.zeros(g, dtype=torch.bool, device=x.device)
    n_iter = torch.zeros(g, dtype=torch.long, device=x.device)
    prev_bound = torch.full((g,), -math.inf, dtype=dtype, device=x.device)
    eps10 = 10 * torch.finfo(dtype).eps
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # E-step with the current parameters
        model = GMM1D(weights, means, variances, n_iter, converged)
        wlp = model.weighted_log_prob(xv)
        log_norm = torch.logsumexp(wlp, dim=-1)  # (G, K)
        resp = torch.exp(wlp - log_norm.unsqueeze(-1)) * m.unsqueeze(-1)
        bound = (log_norm * m).sum(dim=1) / count.clamp(min=1)
        # M-step
        nk = resp.sum(dim=1) + eps10  # (G, 2)
        new_means = (resp * xv.unsqueeze(-1)).sum(dim=1) / nk
        diff = xv.unsqueeze(-1) - new_means.unsqueeze(1)
        new_vars = (resp * diff * diff).sum(dim=1) / nk + reg_covar
        new_weights = nk / nk.sum(dim=1, keepdim=True)
        upd = active.unsqueeze(1)
        means = torch.where(upd, new_means, means)
        variances = torch.where(upd, new_vars, variances)
        weights = torch.where(upd, new_weights, weights)
        n_iter = n_iter + active.long()
        done = active & ((bound - prev_bound).abs() < tol)
        converged = converged | done
        prev_bound = torch.where(active, bound, prev_bound)
        active = active & ~done
    return GMM1D(weights, means, variances, n_iter, converged)
