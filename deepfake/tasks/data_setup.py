"""Config -> data: the embedded dataset on first use, the split datasets, their transforms and loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from deepfake.data.decoded_cache import CACHE_MODES, open_cache
from deepfake.data.transforms import NormaliseOnDevice, build_eval_transform
from deepfake.engine import distributed, loaders
from deepfake.engine.fast_path import resolve_num_workers
from deepfake.errors import ConfigError, DataError
from deepfake.tasks.values import positive_int

log = logging.getLogger(__name__)


def ensure_dataset(dataset_cfg: DictConfig) -> None:
    """Generate the embedded dataset on first use; other datasets must already be on disk."""
    if dataset_cfg.get("generate"):
        instantiate(dataset_cfg.generate)


def train_transform(cfg: DictConfig, preprocess: dict):
    """The augment group's training transform, ending in uint8 images: :func:`train_input`'s
    ``batch_images`` normalises each batch on the device."""
    return instantiate(cfg.augment)(interpolation=preprocess["interpolation"])


def eval_transform(preprocess: dict, *, normalise: bool = True):
    """Evaluation's framing of each image (shorter side resized, centre crop): normalised floats the
    model takes as they are, or with ``normalise=False`` uint8 images for a scoring loader whose
    batches :func:`model_input` normalises on the device (``predict(..., to_input=...)``)."""
    norm = {"mean": preprocess["mean"], "std": preprocess["std"]} if normalise else {}
    return build_eval_transform(preprocess["img_size"], interpolation=preprocess["interpolation"], **norm)


def model_input(preprocess: dict, device: torch.device) -> NormaliseOnDevice:
    """``batch -> model input`` for loaders of uint8 images: the batch normalised on ``device``."""
    return NormaliseOnDevice(device, preprocess["mean"], preprocess["std"])


def make_split(
    dataset_cfg: DictConfig, csv_key: str, transform, *, preprocess: dict | None = None, training: bool = False
) -> Dataset:
    """The dataset of one split CSV; with ``preprocess`` (the model's img_size and interpolation) it
    reads from the decoded-image cache when ``dataset.cache`` covers it."""
    check_split_paths(dataset_cfg, csv_key)
    dataset = instantiate(dataset_cfg.reader)(csv_path=dataset_cfg[csv_key], transform=transform)
    if preprocess is not None:
        attach_cache(dataset, dataset_cfg, preprocess, training=training)
    return dataset


def check_split_paths(dataset_cfg: DictConfig, csv_key: str) -> None:
    """A missing CSV or image folder named by its setting, with what usually fixes it: the batches not
    made yet (dataset=batch), the Kaggle set not downloaded or not where dataset.csv_dir says."""
    csv = Path(str(dataset_cfg[csv_key]))
    if not csv.is_file():
        if "batches_dir" in dataset_cfg:
            fix = "make the batches first (python scripts/make_batches.py --n-batches K; README: Session by session over dataset batches)"
        elif "csv_dir" in dataset_cfg:
            fix = "download the dataset (README: The Kaggle download) and point dataset.csv_dir at its CSVs"
        else:
            fix = "fix the path"
        raise DataError(f"dataset.{csv_key}={csv}: CSV file not found; {fix}")
    root = Path(str(dataset_cfg.root_dir))
    if not root.is_dir():
        raise DataError(f"dataset.root_dir={root}: image folder not found (the images of {csv}); download the "
                        "dataset (README: The Kaggle download) or point dataset.root_dir at it")  # fmt: skip


def attach_cache(
    dataset: Dataset, dataset_cfg: DictConfig, preprocess: dict, *, training: bool = False, mode: str | None = None
) -> Dataset:
    """Serve ``dataset`` from its decoded-image cache (built on first use) when ``mode`` (by default
    ``dataset.cache``) is ``all``, or ``eval`` and this is not the training split."""
    mode = str(dataset_cfg.get("cache", "none") if mode is None else mode)
    if mode not in CACHE_MODES:
        raise ConfigError(f"dataset.cache={mode!r}; use one of {', '.join(CACHE_MODES)}")
    if mode == "all" or (mode == "eval" and not training):
        dataset.cache = open_cache(
            dataset.paths, csv_path=dataset.csv_path, root_dir=dataset.root_dir, img_size=int(preprocess["img_size"]),
            interpolation=preprocess["interpolation"], fallback_size=dataset.fallback_size,
            cache_dir=dataset_cfg.cache_dir,
        )  # fmt: skip
    return dataset


def train_input(cfg: DictConfig, train_set: Dataset, preprocess: dict, device: torch.device):
    """``(dataset, loader_kwargs, batch_images)``: the training split (its transform from
    :func:`train_transform`) as its loader serves it, and what makes a batch into model input on the device.

    ``dataset.decode=cpu``: workers decode and augment, and send uint8 images; the device normalises them.
    ``dataset.decode=cuda``: workers send JPEG bytes (or, with ``dataset.cache=all``, cached pixels),
    the device decodes, crops and flips them; the augmentations it cannot run are refused up front.
    """
    decode = str(cfg.dataset.get("decode", "cpu"))
    if decode == "cpu":
        return train_set, {}, model_input(preprocess, device)
    if decode != "cuda":
        raise ConfigError(f"dataset.decode={decode!r}; use cpu (Pillow in the loader workers) or cuda (on the GPU)")
    augment = cfg.augment
    unsupported = [key for key in ("color_jitter", "jpeg_quality", "blur_sigma") if augment.get(key)]
    if unsupported:
        raise ConfigError(f"dataset.decode=cuda crops and flips on the device, but the augment group also sets "
                          f"{', '.join(unsupported)}; use augment=flip, or dataset.decode=cpu")  # fmt: skip
    if device.type != "cuda":
        log.warning(
            "dataset.decode=cuda on %s: torchvision decodes the JPEGs in the main process, not on a GPU", device
        )
    # Imported only when asked: every other run does without torchvision.io and the device pipeline.
    from deepfake.data.encoded import EncodedSamples, collate_encoded
    from deepfake.engine.device_images import DeviceImages

    encoded = EncodedSamples(
        train_set, crop_scale=augment.get("crop_scale", (1.0, 1.0)), hflip=augment.get("hflip", 0.0)
    )
    to_device = DeviceImages(device, preprocess["img_size"], mean=preprocess["mean"], std=preprocess["std"],
                             interpolation=preprocess["interpolation"])  # fmt: skip
    return encoded, {"collate_fn": collate_encoded}, to_device


def make_loader(
    dataset: Dataset,
    dataset_cfg: DictConfig,
    *,
    device: torch.device,
    train_seed: int | None = None,
    shard: bool = False,
    group: str = "dataset",
    **loader_kwargs,
) -> DataLoader:
    """A training loader (shuffled by ``(train_seed, epoch)``, this rank's share under torchrun) when
    ``train_seed`` is given, else a scoring loader in dataset order (this rank's shard with ``shard``).
    ``dataset_cfg`` holds the loader's settings, ``group`` names them in errors (``predict`` has its own)."""
    here = distributed.ranks()
    common = {
        "num_workers": resolve_num_workers(dataset_cfg.num_workers, device, key=f"{group}.num_workers"),
        "prefetch_factor": positive_int(dataset_cfg.get("prefetch_factor", 2), f"{group}.prefetch_factor"),
        "pin_memory": device.type == "cuda",
        "rank": here.rank,
        "world_size": here.world_size,
    }
    batch_size = positive_int(dataset_cfg.batch_size, f"{group}.batch_size")
    if train_seed is not None:
        loader = loaders.train_loader(
            dataset, batch_size, seed=train_seed, drop_last=bool(dataset_cfg.get("drop_last", False)),
            **common, **loader_kwargs,
        )  # fmt: skip
        if loader.drop_last and len(loader) == 0:  # the only batch was partial, and dropped
            raise ConfigError(
                f"dataset.batch_size={batch_size} is more than the {loader.sampler.per_rank} training images "
                f"{'each rank gets' if here.world_size > 1 else 'there are'}, and dataset.drop_last=true drops a "
                "partial batch: no batch would be left; lower dataset.batch_size, or set dataset.drop_last=false"
            )
        return loader
    if not shard:
        common.update(rank=0, world_size=1)
    return loaders.eval_loader(dataset, batch_size, **common)
