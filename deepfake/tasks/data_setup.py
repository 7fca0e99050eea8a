"""Config -> data: the embedded dataset on first use, the split datasets, their transforms and loaders."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from deepfake.data.transforms import build_eval_transform
from deepfake.engine import distributed, loaders
from deepfake.engine.fast_path import resolve_num_workers
from deepfake.tasks.preflight import positive_int


def ensure_dataset(dataset_cfg: DictConfig) -> None:
    """Generate the embedded dataset on first use; other datasets must already be on disk."""
    if dataset_cfg.get("generate"):
        instantiate(dataset_cfg.generate)


def eval_transform(preprocess: dict):
    return build_eval_transform(
        preprocess["img_size"], mean=preprocess["mean"], std=preprocess["std"], interpolation=preprocess["interpolation"]
    )


def make_split(dataset_cfg: DictConfig, csv_key: str, transform) -> Dataset:
    return instantiate(dataset_cfg.reader)(csv_path=dataset_cfg[csv_key], transform=transform)


def make_loader(
    dataset: Dataset, dataset_cfg: DictConfig, *, device: torch.device, train_seed: int | None = None, shard: bool = False
) -> DataLoader:
    """A training loader (shuffled by ``(train_seed, epoch)``, this rank's share under torchrun) when
    ``train_seed`` is given, else a scoring loader in dataset order (this rank's shard with ``shard``)."""
    here = distributed.ranks()
    common = {
        "num_workers": resolve_num_workers(dataset_cfg.num_workers, device),
        "prefetch_factor": positive_int(dataset_cfg.get("prefetch_factor", 2), "dataset.prefetch_factor"),
        "pin_memory": device.type == "cuda",
        "rank": here.rank,
        "world_size": here.world_size,
    }
    batch_size = positive_int(dataset_cfg.batch_size, "dataset.batch_size")
    if train_seed is not None:
        return loaders.train_loader(dataset, batch_size, seed=train_seed, **common)
    if not shard:
        common.update(rank=0, world_size=1)
    return loaders.eval_loader(dataset, batch_size, **common)
