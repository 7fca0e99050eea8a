"""Settings that only change speed: ``auto`` values resolved from the device, the model and the CPU."""

from __future__ import annotations

import os

import torch

from deepfake.engine.launcher_env import env_world_size
from deepfake.errors import ConfigError


def is_convolutional(model: torch.nn.Module) -> bool:
    """Most of the weights sit in 2-d convolutions (ResNet, EfficientNet, ConvNeXt), unlike a ViT
    or CvT, whose convolutions are thin depthwise projections."""
    conv = sum(
        p.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d) for p in m.parameters(recurse=False)
    )
    return conv > 0.5 * sum(p.numel() for p in model.parameters())


def resolve_channels_last(setting, device: torch.device, model: torch.nn.Module) -> bool:
    """``auto``: on CUDA for convolutional backbones, where NHWC feeds the tensor cores."""
    if str(setting) == "auto":
        return device.type == "cuda" and is_convolutional(model)
    if isinstance(setting, bool):
        return setting
    raise ConfigError(f"train.channels_last={setting!r}; use auto, true or false")


def resolve_num_workers(setting, device: torch.device, key: str = "dataset.num_workers") -> int:
    """``auto``: on a GPU, the CPU cores of this rank's share of the machine, less one for the main
    process, at most 8; on the CPU, where workers take cores from the model, half the cores, at most 4."""
    if str(setting) != "auto":
        try:  # a whole number: int() made 2.5 two workers and YAML's true one
            workers = -1 if isinstance(setting, bool) or float(setting) != int(setting) else int(setting)
        except (TypeError, ValueError, OverflowError):
            workers = -1
        if workers < 0:
            raise ConfigError(f"{key}={setting!r}; use auto or a whole number >= 0")
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", env_world_size()))
    share = max(1, cores // max(1, ranks_here))
    if device.type == "cuda":
        return min(8, max(1, share - 1))
    return min(4, share // 2)


def resolve_compile(setting) -> str | None:
    """``train.compile``: false (eager), true (torch.compile's default backend, inductor) or a backend's
    name (``aot_eager`` to debug a graph without generating code, ``cudagraphs``, ...). None: eager."""
    if setting is False or setting is None or str(setting).lower() == "false":
        return None
    if setting is True or str(setting).lower() == "true":
        return "inductor"
    backend = str(setting)
    from torch._dynamo import list_backends  # imported only when compiling

    if backend not in list_backends(exclude_tags=()):  # debugging backends (aot_eager, eager) included
        raise ConfigError(f"train.compile={backend!r}; use false, true (inductor) or a backend: "
                          f"{', '.join(list_backends())}, aot_eager")  # fmt: skip
    return backend
