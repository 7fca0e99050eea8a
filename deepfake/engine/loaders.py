"""DataLoaders for training and scoring, on one process or one rank of many."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from deepfake.data.samplers import EpochSampler, SeededSamples, ShardSampler
from deepfake.engine.stopping import init_worker


def train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    **loader_kwargs,
) -> DataLoader:
    """Shuffled by ``(seed, epoch)`` through an :class:`EpochSampler` (the trainer sets the epoch and,
    on a resume part-way through one, the samples to skip); this rank's share when ``world_size > 1``."""
    sampler = EpochSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=init_worker,
        # Worker seeds come from this generator, reseeded by the trainer with (seed, epoch, rank).
        # Augmentations do not depend on them (each sample has its own seed), so workers can live
        # for the whole run instead of starting again every epoch.
        generator=torch.Generator(),
        **_worker_options(num_workers, prefetch_factor),
        **loader_kwargs,
    )


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """In dataset order; with ``world_size > 1`` this rank's shard (every sample scored once overall)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank=rank, world_size=world_size) if world_size > 1 else None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=init_worker,
        **_worker_options(num_workers, prefetch_factor),
    )


def _worker_options(num_workers: int, prefetch_factor: int) -> dict:
    """Workers kept between epochs (validation runs every epoch too), each with batches in flight."""
    if num_workers == 0:
        return {}
    return {"persistent_workers": True, "prefetch_factor": prefetch_factor}
