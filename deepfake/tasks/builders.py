"""Config -> objects, shared by the tasks: data, loaders, checkpoints, registry, run metadata."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from deepfake.data.transforms import build_eval_transform
from deepfake.engine import distributed, loaders
from deepfake.errors import CheckpointError, ConfigError
from deepfake.tasks.jobs import job_run_name, now_iso  # noqa: F401  (now_iso: the tasks' clock)
from deepfake.tracking.checkpoint import load_checkpoint
from deepfake.tracking.registry import Registry

log = logging.getLogger(__name__)


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def run_name() -> str:
    return job_run_name(run_dir())


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task)


def save_resolved_config(cfg: DictConfig, out_dir: Path) -> Path:
    """A resolved copy beside Hydra's own .hydra/config.yaml: the values as they were used."""
    path = out_dir / "config_resolved.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


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
        "num_workers": int(dataset_cfg.num_workers),
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


def resolve_checkpoint(spec: str | None, cfg: DictConfig, *, what: str) -> Path:
    """``best`` or None -> the global best; a run dir -> its best.pth; a file -> itself."""
    if spec in (None, "best"):
        path = Path(cfg.paths.best_model)
        if not path.is_file():
            raise CheckpointError(f"{what}: there is no global best model yet ({path}); train first or pass a path")
        return path
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        path = path / "best.pth"
    if not path.is_file():
        raise CheckpointError(f"{what}={spec}: no such checkpoint ({path}); pass a run dir or a .pth file")
    return path


def load_weights_into(model: torch.nn.Module, path: Path) -> dict:
    """``init_from``: copy a checkpoint's weights into a freshly built model of the same backbone."""
    checkpoint = load_checkpoint(path)
    check_backbone(checkpoint, model, f"init_from={path}")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"init_from={path}: its weights do not fit this {model.detector_spec['name']} "
            f"({str(err).splitlines()[0]}); build the backbone with the same settings"
        ) from err
    return checkpoint


def check_backbone(checkpoint: dict, model: torch.nn.Module, what: str) -> None:
    """A checkpoint's weights only fit the backbone they were trained with."""
    trained_with = (checkpoint.get("model_spec") or {}).get("name")
    if trained_with != model.detector_spec["name"]:
        raise CheckpointError(
            f"{what} was trained with backbone {trained_with!r}, not {model.detector_spec['name']!r}; "
            f"pass backbone=... to match, or another checkpoint"
        )


def open_registry(cfg: DictConfig) -> Registry:
    return Registry(Path(cfg.paths.registry), Path(cfg.paths.best_model), float(cfg.registry.lock_timeout_s))


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values()]


def positive_int(value, key: str) -> int:
    if int(value) <= 0:
        raise ConfigError(f"{key}={value} must be a positive integer")
    return int(value)
