"""Mixed precision: one place that turns ``train.precision`` into autocast and a grad scaler."""

from __future__ import annotations

import contextlib

import torch

from deepfake.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means bf16 on a CUDA device that supports it, fp16 on older ones, fp32 on CPU."""
    precision = str(precision)
    if precision not in ("auto", "32", "bf16", "16"):
        raise ConfigError(f"train.precision={precision!r}; use one of auto, 32, bf16, 16")
    if precision == "auto":
        if device.type != "cuda":
            return "32"
        return "bf16" if torch.cuda.is_bf16_supported() else "16"
    if precision == "16" and device.type != "cuda":
        raise ConfigError("train.precision=16 needs a CUDA device; use 32 or bf16 on the CPU")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A scaler that is only active for fp16, where small gradients would underflow."""
    return torch.amp.GradScaler(device.type, enabled=precision == "16")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"train.device={device!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device} but no CUDA device is visible; use train.device=cpu")
    return resolved
