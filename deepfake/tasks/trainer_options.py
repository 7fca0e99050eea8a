"""The Trainer's settings read from the config: one place, so that task=bench trains as a run does.

Everything here comes from ``cfg.train``, ``cfg.optimizer`` and ``cfg.scheduler``; what differs
between a run and the bench (the loaders, the phases, the trackers, the run dir) is passed by each.
"""

from __future__ import annotations

from functools import partial

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from deepfake.engine.fast_path import resolve_channels_last, resolve_compile
from deepfake.engine.precision import resolve_precision
from deepfake.errors import ConfigError
from deepfake.tasks.preflight import positive_int


def trainer_options(cfg: DictConfig, device: torch.device, model: torch.nn.Module) -> dict:
    """Keyword arguments of :class:`deepfake.engine.trainer.Trainer`, checked as they are read."""
    train = cfg.train
    return {
        "make_optimizer": instantiate(cfg.optimizer),
        "make_scheduler": instantiate(cfg.scheduler),
        "precision": resolve_precision(train.precision, device),
        "accumulate_grad_batches": positive_int(train.accumulate_grad_batches, "train.accumulate_grad_batches"),
        "grad_clip_norm": train.grad_clip_norm,
        "sync_batchnorm": bool(train.sync_batchnorm),
        "log_every_n_batches": positive_int(train.log_every_n_batches, "train.log_every_n_batches"),
        "channels_last": resolve_channels_last(train.channels_last, device, model),
        "compile_model": resolve_compile(train.compile),
        "background_checkpoints": bool(train.background_checkpoints),
        "log_sample_paths": int(train.log_sample_paths),
        "label_smoothing": float(train.label_smoothing),
        "ema": moving_average(train.ema),
    }


def moving_average(settings: DictConfig):
    """train.ema: timm's ModelEmaV3 with the configured decay, or None."""
    if not settings.enabled:
        return None
    decay = float(settings.decay)
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema.decay={settings.decay} must be in (0, 1); 0.9998 is timm's usual choice")
    from timm.utils import ModelEmaV3

    return partial(ModelEmaV3, decay=decay, use_warmup=bool(settings.warmup))
