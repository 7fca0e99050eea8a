"""train.precision and train.device resolve to what the hardware can do, or say why not."""

import pytest
import torch

from deepfake.engine.precision import autocast, make_grad_scaler, resolve_device, resolve_precision
from deepfake.errors import ConfigError

CPU = torch.device("cpu")


def test_auto_precision_is_full_precision_on_the_cpu():
    assert resolve_precision("auto", CPU) == "32"


def test_auto_precision_on_cuda_prefers_bf16(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", cuda) == "16"


def test_fp16_needs_cuda_and_unknown_values_are_refused():
    with pytest.raises(ConfigError, match="train.precision=16 needs a CUDA device"):
        resolve_precision("16", CPU)
    with pytest.raises(ConfigError, match="train.precision='64'"):
        resolve_precision("64", CPU)


def test_grad_scaler_is_active_only_for_fp16():
    assert make_grad_scaler(CPU, "16").is_enabled()
    assert not make_grad_scaler(CPU, "32").is_enabled()
    assert not make_grad_scaler(CPU, "bf16").is_enabled()


def test_bf16_autocast_runs_matmuls_in_bf16_on_the_cpu():
    a = torch.randn(4, 4)
    with autocast(CPU, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(CPU, "32"):
        assert (a @ a).dtype == torch.float32


def test_devices():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else CPU)
    with pytest.raises(ConfigError, match="train.device='gpu0' is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is visible"):
            resolve_device("cuda")
