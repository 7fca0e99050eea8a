"""DataLoaders for training and scoring, on one process or one rank of many."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deepfake.data.samplers import EpochSampler, SeededSamples, ShardSampler
from deepfake.engine.stopping import init_worker

# Worker seeds of rank r come from seed + r * this: apart from every other rank's.
_RANK_SEED_STRIDE = 100_003


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
    drop_last: bool = False,
    **loader_kwargs,
) -> DataLoader:
    """Shuffled by ``(seed, epoch)`` through an :class:`EpochSampler` (the trainer sets the epoch and,
    on a resume part-way through one, the samples to skip); this rank's share when ``world_size > 1``.
    ``drop_last``: without the epoch's last batch when it is partial."""
    return _loader(
        SeededSamples(dataset), batch_size, EpochSampler(len(dataset), seed=seed, rank=rank, world_size=world_size),
        num_workers, pin_memory, prefetch_factor,
        # Worker seeds (torch seeds python, numpy and torch in each worker) depend on the seed and rank only.
        # Augmentations do not depend on them (each sample has its own seed), so workers can live
        # for the whole run instead of starting again every epoch.
        generator=torch.Generator().manual_seed(seed + _RANK_SEED_STRIDE * rank),
        drop_last=drop_last,
        **loader_kwargs,
    )  # fmt: skip


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
    sampler = ShardSampler(len(dataset), rank=rank, world_size=world_size) if world_size > 1 else None
    # Workers that end with each pass: persistent ones outlive a task whose loader sits in a reference
    # cycle, and since they ignore SIGTERM the process's exit then waits on them forever (task=predict
    # hung at exit that way).
    return _loader(dataset, batch_size, sampler, num_workers, pin_memory, prefetch_factor, persistent=False)


def _loader(dataset: Dataset, batch_size: int, sampler: Sampler | None, num_workers: int, pin_memory: bool,
            prefetch_factor: int, persistent: bool = True, **loader_kwargs) -> DataLoader:  # fmt: skip
    """Workers deaf to stop signals, each with batches in flight, kept between epochs when ``persistent``."""
    if num_workers > 0:
        loader_kwargs = {"persistent_workers": persistent, "prefetch_factor": prefetch_factor, **loader_kwargs}
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        worker_init_fn=init_worker, **loader_kwargs,
    )  # fmt: skip


def shut_down_workers(loader: DataLoader) -> None:
    """End ``loader``'s persistent workers now. They ignore SIGTERM (init_worker), so a process whose
    loader outlives its task (held by a reference cycle until exit) waited on them forever at exit:
    multiprocessing's exit hook terminates its children with SIGTERM and joins them. torch has no public
    call for this; its iterator's own shutdown (what its ``__del__`` runs) is the one place that knows
    how to stop them cleanly."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
