"""Which samples each process draws, and in what order: the whole of an epoch's data randomness.

:class:`EpochSampler` (training) fixes an epoch from ``(seed, epoch)`` alone: the order, each rank's
share of it, and a seed per sample for its augmentations. A run that stops part-way through an
epoch resumes by skipping the samples it already trained on, without loading them, and every
remaining sample is augmented exactly as it would have been: its seed does not depend on how many
samples, workers or ranks came before. :class:`ShardSampler` (validation) gives each rank every
``world_size``-th sample, without padding, so gathered predictions hold each sample exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

# Mixes (seed, epoch, index) into one augmentation seed; a large prime keeps neighbours apart.
_SEED_STRIDE = 1_000_003


class EpochSampler(Sampler):
    """Shuffled by ``(seed, epoch)``, sharded across ranks, resumable part-way; yields ``(index, seed)``.

    The permutation is padded by repeating it from its head until every rank gets the same number of
    samples (DistributedSampler's rule: training needs the ranks to take the same number of steps).
    Rank ``r`` takes positions ``r, r + world_size, ...``, so with batch ``B`` per rank the k-th
    batches of all ranks together are the k-th batch of one process with batch ``B * world_size``.
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.n, self.seed = int(n), int(seed)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # samples of this rank's share to skip (a resumed epoch)

    @property
    def per_rank(self) -> int:
        """Samples of one rank's share of a whole epoch."""
        return math.ceil(self.n / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, samples: int) -> None:
        """Start this rank's share of the epoch at sample ``samples`` (0: from the beginning)."""
        if not 0 <= samples <= self.per_rank:
            raise ValueError(f"cannot skip {samples} of {self.per_rank} samples")
        self.start = int(samples)

    def _order(self) -> list[int]:
        # Not seed + epoch: seed 1's first epoch would replay seed 0's second, and replicates with
        # seeds 0, 1, 2 would share their orders shifted by an epoch.
        generator = torch.Generator().manual_seed((self.seed * _SEED_STRIDE + self.epoch) % 2**63)
        order = torch.randperm(self.n, generator=generator).tolist()
        padding = self.per_rank * self.world_size - self.n
        # Repeated as often as needed: fewer samples than ranks still gives every rank its share.
        return order + (order * math.ceil(padding / max(self.n, 1)))[:padding]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        share = self._order()[self.rank :: self.world_size]
        epoch_seed = (self.seed * _SEED_STRIDE + self.epoch) * _SEED_STRIDE
        for index in share[self.start :]:
            yield index, (epoch_seed + index) % 2**63

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler):
    """Rank ``r`` of ``world_size`` scores samples ``r, r + world_size, ...``: each exactly once."""

    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.n, self.rank, self.world_size = int(n), rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class SeededSamples(Dataset):
    """``dataset`` indexed by an :class:`EpochSampler`'s ``(index, seed)``: each sample's random
    augmentations draw from torch's RNG seeded with its own seed, and leave the process's RNG as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        # The CPU generator alone, directly: torch.manual_seed also visits every accelerator's
        # generator and costs 60 times more, per sample.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)

    # What the trainer reports about damaged images.
    @property
    def paths(self) -> list[str]:
        return self.dataset.paths

    def damage_reason(self, index: int) -> str | None:
        return self.dataset.damage_reason(index)
