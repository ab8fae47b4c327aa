"""A training data loader whose batches are a pure function of (SEED, iteration).

detectron2 v0.6's loader cannot resume exactly: ``TrainingSampler`` restarts its stream at
the first epoch on every start, augmentations draw from global RNGs whose state depends on
everything drawn before, and with several DataLoader workers the batch of an iteration also
depends on which worker made it. :class:`ResumableTrainLoader` replaces those three sources
of state:

* **Order.** The data set is read as one infinite stream of epochs; the order of epoch ``e``
  comes from ``derive_seed(SEED, EPOCH_ORDER, e)`` (see :class:`EpochOrder`). Rank ``r`` of
  ``W`` reads global positions ``r, r + W, r + 2W, ...`` as detectron2's samplers do, and
  iteration ``i`` uses this rank's positions ``[i * B, (i + 1) * B)`` (``B`` = images per
  rank), so a loader started at ``start_iter`` jumps straight there. With aspect-ratio
  grouping a batch is not a fixed slice; the grouping is then done on indices (image sizes
  from the data set dicts) and replayed from position 0, which costs no image loading.
* **Augmentation.** Before the mapper runs on the sample at global position ``g``, python's,
  numpy's and torch's global RNGs are seeded from ``derive_seed(SEED, SAMPLE, g)``: the
  random flip or resize of a sample does not depend on the worker, the number of workers, or
  what was drawn before.
* **Workers.** Each DataLoader worker builds whole batches: worker ``k`` of ``K`` makes the
  batches ``k, k + K, ...`` counted from ``start_iter``; PyTorch returns the outputs of an
  iterable data set's workers round-robin, i.e. in iteration order.

The loader is lazy: constructing it and calling ``iter()`` start no worker; the first
``next()`` does. The trainer therefore builds it at construction and replaces it with
:meth:`ResumableTrainLoader.start_at` once ``resume_or_load`` knows the start iteration.
"""

import copy
import itertools
import logging
from collections import defaultdict
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch.utils.data as torchdata
from detectron2.config import configurable
from detectron2.data import DatasetFromList, DatasetMapper, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils import comm
from detectron2.utils.serialize import PicklableWrapper

from .seeding import DOMAIN, derive_seed, seed_global_rngs

__all__ = [
    "EpochOrder",
    "RandomSubsetEpochs",
    "RepeatFactorEpochs",
    "ResumableTrainLoader",
    "ShuffledEpochs",
    "build_epoch_order",
    "iter_batch_positions",
    "iter_stream",
]

logger = logging.getLogger(__name__)

# (global stream position, data set index)
Slot = Tuple[int, int]


class EpochOrder:
    """The data set indices of each epoch; a pure function of (seed, epoch).

    Subclasses define :meth:`indices`; :meth:`length` and :meth:`locate` may be overridden
    when the epoch length is known without drawing the order.
    """

    def indices(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def length(self, epoch: int) -> int:
        return len(self.indices(epoch))

    def locate(self, position: int) -> Tuple[int, int]:
        """``(epoch, first global position of that epoch)`` of a global stream position."""
        epoch, start = 0, 0
        while start + self.length(epoch) <= position:
            start += self.length(epoch)
            epoch += 1
        return epoch, start


class ShuffledEpochs(EpochOrder):
    """detectron2's ``TrainingSampler``: every epoch is a permutation of the whole set."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        if size <= 0:
            raise ValueError(f"Cannot sample from an empty training set (size {size}).")
        self._size, self._seed, self._shuffle = int(size), int(seed), shuffle

    def indices(self, epoch):
        if not self._shuffle:
            return np.arange(self._size)
        rng = np.random.default_rng(derive_seed(self._seed, DOMAIN.EPOCH_ORDER, epoch))
        return rng.permutation(self._size)

    def length(self, epoch):
        return self._size

    def locate(self, position):
        epoch = position // self._size
        return epoch, epoch * self._size


class RandomSubsetEpochs(EpochOrder):
    """detectron2's ``RandomSubsetTrainingSampler``: one fixed random subset, reshuffled."""

    def __init__(self, size: int, subset_ratio: float, seed: int):
        if not 0.0 < subset_ratio <= 1.0:
            raise ValueError(
                f"DATALOADER.RANDOM_SUBSET_RATIO must be in (0, 1], got {subset_ratio}."
            )
        rng = np.random.default_rng(derive_seed(seed, DOMAIN.SUBSET))
        self._subset = rng.permutation(size)[: max(1, int(size * subset_ratio))]
        self._order = ShuffledEpochs(len(self._subset), seed)

    def indices(self, epoch):
        return self._subset[self._order.indices(epoch)]

    def length(self, epoch):
        return len(self._subset)

    def locate(self, position):
        return self._order.locate(position)


class RepeatFactorEpochs(EpochOrder):
    """detectron2's ``RepeatFactorTrainingSampler``: index ``i`` appears ``floor(r_i)`` or
    ``ceil(r_i)`` times per epoch (stochastic rounding), then the epoch is shuffled."""

    def __init__(self, repeat_factors: Sequence[float], seed: int):
        factors = np.asarray(repeat_factors, dtype=np.float64)
        self._int_part = np.floor(factors)
        self._frac_part = factors - self._int_part
        self._seed = int(seed)
        self._cache = {}

    def indices(self, epoch):
        if epoch not in self._cache:
            rng = np.random.default_rng(derive_seed(self._seed, DOMAIN.REPEAT, epoch))
            reps = self._int_part + (rng.random(len(self._frac_part)) < self._frac_part)
            idx = np.repeat(np.arange(len(reps)), reps.astype(np.int64))
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[epoch] = idx[rng.permutation(len(idx))]
        return self._cache[epoch]


def build_epoch_order(cfg, dataset_dicts: List[dict], seed: int) -> EpochOrder:
    """The :class:`EpochOrder` named by ``cfg.DATALOADER.SAMPLER_TRAIN``."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        return ShuffledEpochs(len(dataset_dicts), seed)
    if name == "RandomSubsetTrainingSampler":
        return RandomSubsetEpochs(len(dataset_dicts), cfg.DATALOADER.RANDOM_SUBSET_RATIO, seed)
    if name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        return RepeatFactorEpochs(factors.tolist(), seed)
    raise ValueError(
        f"Unknown DATALOADER.SAMPLER_TRAIN {name!r}; expected TrainingSampler, "
        "RepeatFactorTrainingSampler or RandomSubsetTrainingSampler."
    )


def iter_stream(order: EpochOrder, position: int, rank: int, world_size: int) -> Iterator[Slot]:
    """This rank's slots from its ``position``-th one on: global positions
    ``(position + j) * world_size + rank`` for j = 0, 1, ..., with their data set indices."""
    g = position * world_size + rank
    epoch, start = order.locate(g)
    indices = order.indices(epoch)
    while True:
        while g >= start + len(indices):
            start += len(indices)
            epoch += 1
            indices = order.indices(epoch)
        yield g, int(indices[g - start])
        g += world_size


def iter_batch_positions(
    order: EpochOrder,
    batch_size: int,
    start_iter: int,
    rank: int = 0,
    world_size: int = 1,
    groups: Optional[np.ndarray] = None,
) -> Iterator[List[Slot]]:
    """This rank's batches of slots for iterations ``start_iter, start_iter + 1, ...``.

    Args:
        groups: aspect-ratio group of every data set index (as detectron2's
            ``AspectRatioGroupedDataset``: width > height or not), or None for no grouping.
            A batch holds images of one group; the grouping is replayed from the start of the
            stream, which is what makes it independent of where the loader starts.
    """
    if groups is None:
        stream = iter_stream(order, start_iter * batch_size, rank, world_size)
        while True:
            yield list(itertools.islice(stream, batch_size))
    buckets = defaultdict(list)
    made = 0
    for slot in iter_stream(order, 0, rank, world_size):
        bucket = buckets[groups[slot[1]]]
        bucket.append(slot)
        if len(bucket) == batch_size:
            if made >= start_iter:
                yield list(bucket)
            bucket.clear()
            made += 1


class _IterationBatches(torchdata.IterableDataset):
    """Mapped batches in iteration order; DataLoader worker ``k`` of ``K`` makes the batches
    ``k, k + K, ...`` so that the round-robin merge of the workers keeps that order."""

    def __init__(self, dataset, mapper, batch_positions, seed):
        self._dataset = dataset
        self._mapper = PicklableWrapper(mapper)
        self._batch_positions = batch_positions  # () -> iterator over List[Slot]
        self._seed = seed

    def __iter__(self):
        info = torchdata.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for n, slots in enumerate(self._batch_positions()):
            if n % num_workers == worker:
                yield [self._map(g, index) for g, index in slots]

    def _map(self, position: int, index: int):
        """The mapped sample at a global stream position, with RNGs seeded from it.

        A mapper that returns None (detectron2's way to drop a sample) is retried on other
        indices drawn from (SEED, position, attempt), so even the replacement is reproducible.
        """
        for attempt in itertools.count():
            seed_global_rngs(derive_seed(self._seed, DOMAIN.SAMPLE, position, attempt))
            data = self._mapper(self._dataset[index])
            if data is not None:
                return data
            if attempt >= 2:
                logger.warning(
                    f"The mapper dropped {attempt + 1} samples for stream position {position}."
                )
            rng = np.random.default_rng(derive_seed(self._seed, DOMAIN.RETRY, position, attempt))
            index = int(rng.integers(len(self._dataset)))


def _no_collate(batch):
    return batch


def _aspect_groups(dataset_dicts: List[dict]) -> Optional[np.ndarray]:
    """Group 0 for width > height, else 1 (as detectron2); None if a dict lacks the size."""
    try:
        return np.asarray([0 if d["width"] > d["height"] else 1 for d in dataset_dicts])
    except KeyError:
        return None


class ResumableTrainLoader:
    """Iterable over this rank's training batches (lists of mapped dicts) from ``start_iter``.

    A drop-in for detectron2's training loader (same batches format) whose batch at every
    iteration depends only on (``seed``, iteration, rank, world size): see the module
    docstring. Built from a config with ``ResumableTrainLoader(cfg, mapper=..., dataset=...)``.
    """

    @configurable
    def __init__(
        self,
        dataset: List[dict],
        *,
        mapper,
        order: EpochOrder,
        total_batch_size: int,
        seed: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        start_iter: int = 0,
    ):
        """
        Args:
            dataset: the data set dicts (detectron2 format).
            mapper: dataset dict -> model input dict (e.g. ``DatasetMapper(cfg, True)``).
            order: which indices each epoch reads (:func:`build_epoch_order`).
            total_batch_size: images per iteration over all ranks.
            seed: the run's seed (>= 0).
            aspect_ratio_grouping: batch images with width > height apart from the others.
            num_workers: DataLoader worker processes (0: map in this process).
            start_iter: the first iteration this loader produces.
        """
        world_size = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be a positive multiple of "
                f"the number of processes ({world_size})."
            )
        self._dataset_dicts = dataset
        self._dataset = DatasetFromList(dataset, copy=False)
        self._mapper = mapper
        self._order = order
        self._total_batch_size = total_batch_size
        self._batch_size = total_batch_size // world_size
        self._seed = int(seed)
        self._groups = _aspect_groups(dataset) if aspect_ratio_grouping else None
        if aspect_ratio_grouping and self._groups is None:
            logger.warning(
                "Aspect-ratio grouping is off: some data set dicts have no width/height."
            )
        self._num_workers = num_workers
        self.start_iter = int(start_iter)
        self._rank, self._world_size = comm.get_rank(), world_size
        logger.info(
            f"Training data from iteration {self.start_iter}: {self._batch_size} image(s) per "
            f"iteration on rank {self._rank} ({total_batch_size} over {world_size} process(es)), "
            f"{num_workers} worker(s), seed {self._seed}."
        )

    @classmethod
    def from_config(cls, cfg, *, dataset=None, mapper=None, start_iter=0):
        """Arguments from ``cfg``; ``dataset`` defaults to detectron2's loading of DATASETS.TRAIN
        and ``mapper`` to ``DatasetMapper(cfg, True)``."""
        if dataset is None:
            dataset = get_detection_dataset_dicts(
                cfg.DATASETS.TRAIN,
                filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                min_keypoints=(
                    cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
                    if cfg.MODEL.KEYPOINT_ON
                    else 0
                ),
                proposal_files=(
                    cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None
                ),
            )
        if cfg.SEED < 0:
            raise ValueError(
                "ResumableTrainLoader needs a fixed cfg.SEED (>= 0); lgdkd.engine.setup picks and "
                "saves one when the config says SEED -1."
            )
        return {
            "dataset": dataset,
            "mapper": DatasetMapper(cfg, True) if mapper is None else mapper,
            "order": build_epoch_order(cfg, dataset, cfg.SEED),
            "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
            "seed": cfg.SEED,
            "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            "num_workers": cfg.DATALOADER.NUM_WORKERS,
            "start_iter": start_iter,
        }

    def start_at(self, start_iter: int) -> "ResumableTrainLoader":
        """The same loader (sharing data, mapper and seed) starting at ``start_iter``."""
        loader = copy.copy(self)
        loader.start_iter = int(start_iter)
        logger.info(f"Training data from iteration {loader.start_iter} on.")
        return loader

    def batch_positions(self) -> Iterator[List[Slot]]:
        """The (global stream position, data set index) slots of each batch, unmapped."""
        return iter_batch_positions(
            self._order,
            self._batch_size,
            self.start_iter,
            self._rank,
            self._world_size,
            self._groups,
        )

    def __iter__(self):
        # A generator: nothing (no worker process) starts before the first next().
        batches = _IterationBatches(self._dataset, self._mapper, self.batch_positions, self._seed)
        if self._num_workers == 0:
            yield from batches
            return
        loader = torchdata.DataLoader(
            batches, batch_size=None, num_workers=self._num_workers, collate_fn=_no_collate
        )
        yield from loader
