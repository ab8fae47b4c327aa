"""Soft-label distillation loss of LAD's Soft-Label KD and SoLAD (Nguyen et al., WACV 2022;
cybercore-co-ltd/CoLAD ``FocalKLLoss``)."""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focal_binary_kl"]


def focal_binary_kl(logits: Tensor, target: Tensor, gamma: float = 0.5) -> Tensor:
    """Elementwise ``|t - p|^gamma * KL(Bernoulli(t) || Bernoulli(p))`` with p = sigmoid(logits)
    and t the teacher probability; the factor is ``((t - p)^2 + 1e-6)^(gamma / 2)`` and
    ``0 log 0 = 0``. No temperature. Computed in fp32."""
    z = logits.float()
    t = target.float()
    log_p = F.logsigmoid(z)
    log_q = F.logsigmoid(-z)  # log(1 - p)
    kl = torch.xlogy(t, t) - t * log_p + torch.xlogy(1 - t, 1 - t) - (1 - t) * log_q
    factor = ((t - z.sigmoid()) ** 2 + 1e-6) ** (0.5 * gamma)
    return factor * kl
