"""Random draws as pure functions of (SEED, where in training), so that resume is exact.

Every random stream of training gets its seed from :func:`derive_seed` with a domain tag
and integer coordinates (epoch, stream position, iteration, rank) instead of from a global
RNG that carries state from the start of the run. A run resumed at iteration N therefore
draws exactly what an uninterrupted run draws from iteration N on.
"""

import random

import numpy as np
import torch

__all__ = ["DOMAIN", "derive_seed", "seed_global_rngs"]


class DOMAIN:
    """Tags that keep the seed streams of different purposes apart."""

    EPOCH_ORDER = 1  # permutation of the data set in one epoch
    SUBSET = 2  # the subset of RandomSubsetTrainingSampler
    REPEAT = 3  # stochastic rounding of RepeatFactorTrainingSampler in one epoch
    SAMPLE = 4  # augmentation of the sample at one position of the stream
    RETRY = 5  # replacement index when the mapper drops a sample
    STEP = 6  # model-side randomness (RPN/ROI sampling, ...) of one iteration on one rank


def derive_seed(seed: int, domain: int, *coords: int) -> int:
    """A 32-bit seed that depends only on ``(seed, domain, *coords)`` (all non-negative ints).

    Hashed with numpy's SeedSequence, so neighbouring coordinates give unrelated streams.
    """
    entropy = [int(seed), int(domain), *(int(c) for c in coords)]
    if min(entropy) < 0:
        raise ValueError(f"derive_seed needs non-negative integers, got {entropy}.")
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_global_rngs(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch's default generators.

    These are the RNGs that detectron2's augmentations (numpy), samplers (torch.randperm)
    and user code (``random``) draw from implicitly.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
