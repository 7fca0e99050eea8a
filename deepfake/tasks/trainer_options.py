"""The Trainer's settings read from the config: one place, so that task=bench trains as a run does.

Everything here comes from ``cfg.train``, ``cfg.optimizer`` and ``cfg.scheduler``; what differs
between a run and the bench (the loaders, the trackers, the run dir, the phases' epochs) is passed by
each. ``phase_plan`` reads ``cfg.phase`` for both.
"""

from __future__ import annotations

from functools import partial

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from deepfake.engine.fast_path import resolve_channels_last, resolve_compile
from deepfake.engine.phases import Phase, plan_phases
from deepfake.engine.precision import resolve_precision
from deepfake.errors import ConfigError
from deepfake.tasks.values import non_negative, number, positive_int


def trainer_options(cfg: DictConfig, device: torch.device, model: torch.nn.Module) -> dict:
    """Keyword arguments of :class:`deepfake.engine.trainer.Trainer`, checked as they are read."""
    train = cfg.train
    return {
        "make_optimizer": _optimizer(cfg.optimizer, device),
        "make_scheduler": _scheduler(cfg.scheduler),
        "precision": resolve_precision(train.precision, device),
        "accumulate_grad_batches": positive_int(train.accumulate_grad_batches, "train.accumulate_grad_batches"),
        "grad_clip_norm": _clip_norm(train.grad_clip_norm),
        "sync_batchnorm": bool(train.sync_batchnorm),
        "log_every_n_batches": positive_int(train.log_every_n_batches, "train.log_every_n_batches"),
        "channels_last": resolve_channels_last(train.channels_last, device, model),
        "compile_model": resolve_compile(train.compile),
        "background_checkpoints": bool(train.background_checkpoints),
        "log_sample_paths": non_negative(train.log_sample_paths, "train.log_sample_paths", int),
        "label_smoothing": number(train.label_smoothing, "train.label_smoothing"),
        "ema": moving_average(train.ema),
    }


def phase_plan(phase: DictConfig, **replaced) -> list[Phase]:
    """The phases of ``phase.*``, each setting checked (whole epochs, rates and warmup of 0 or more: a
    negative rate would climb the loss, silently); ``replaced`` settings (the bench's epochs) win."""
    settings = {**phase, **replaced}
    return plan_phases(
        head_epochs=non_negative(settings["head_epochs"], "phase.head_epochs", int),
        finetune_epochs=non_negative(settings["finetune_epochs"], "phase.finetune_epochs", int),
        lr_head=non_negative(settings["lr_head"], "phase.lr_head"),
        lr_backbone=non_negative(settings["lr_backbone"], "phase.lr_backbone"),
        warmup_epochs=non_negative(settings.get("warmup_epochs", 0.0), "phase.warmup_epochs"),
        weight_decay_exclude_1d=bool(settings.get("weight_decay_exclude_1d", True)),
        layer_decay=None
        if settings.get("layer_decay") is None
        else number(settings["layer_decay"], "phase.layer_decay"),
    )


def _optimizer(settings: DictConfig, device: torch.device):
    """``optimizer``'s factory, tried once on one parameter: a bad setting (``weight_decay=abc``, a
    negative ``eps``) ends here in one line, not in the optimizer's traceback at the first phase."""
    make = instantiate(settings)
    try:
        make([{"params": [torch.zeros(1, device=device, requires_grad=True)]}])
    except (TypeError, ValueError, RuntimeError) as err:  # RuntimeError: settings that exclude each other
        raise _cannot_build("optimizer", settings, err) from None
    return make


def _scheduler(settings: DictConfig):
    """``scheduler``'s factory, tried on a throwaway optimizer through a warm-up and a decay step, as
    the trainer uses it: ``lr_min=abc`` fails only when the schedule is first computed, and a negative
    ``lr_min`` in timm's assertion, with no message."""
    make = instantiate(settings)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        schedule = make(optimizer, t_initial=10, warmup_t=2)
        for step in (0, 1, 5):  # per step (the trainer's way) and per epoch: whichever it computes
            schedule.step_update(step)
            schedule.step(step)
    except (TypeError, ValueError, AssertionError) as err:
        raise _cannot_build("scheduler", settings, err) from None
    return make


def _cannot_build(group: str, settings: DictConfig, err: Exception) -> ConfigError:
    shown = ", ".join(f"{key}={value}" for key, value in settings.items() if not str(key).startswith("_"))
    reason = " ".join(str(err).split()) or f"{type(err).__name__} in {settings.get('_target_')}"
    return ConfigError(f"{group} ({shown}) cannot be built: {reason}")


def _clip_norm(value) -> float | None:
    """train.grad_clip_norm: null or 0 (no clipping) or a positive norm; a negative one flipped the gradients."""
    norm = None if value is None else non_negative(value, "train.grad_clip_norm")
    return norm or None


def moving_average(settings: DictConfig):
    """train.ema: timm's ModelEmaV3 with the configured decay, or None."""
    if not settings.enabled:
        return None
    decay = number(settings.decay, "train.ema.decay")
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema.decay={settings.decay} must be in (0, 1); 0.9998 is timm's usual choice")
    from timm.utils import ModelEmaV3

    return partial(ModelEmaV3, decay=decay, use_warmup=bool(settings.warmup))
