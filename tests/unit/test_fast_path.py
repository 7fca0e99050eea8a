"""The fast path's pieces: the loss read back only now and then, and the `auto` settings."""

from __future__ import annotations

import math

import pytest
import torch

from deepfake.engine.fast_path import is_convolutional, resolve_channels_last, resolve_num_workers
from deepfake.engine.loss_watch import LossWatch
from deepfake.errors import ConfigError
from deepfake.models import create_detector


def test_the_loss_sum_on_the_device_equals_the_host_sum_and_finds_the_first_bad_batch():
    watch = LossWatch(torch.device("cpu"))
    watch.start(1.5)  # a resumed epoch goes on from its saved sum
    losses = [(0.25, 8), (0.5, 8), (float("nan"), 4), (float("inf"), 8)]
    for index, (value, samples) in enumerate(losses[:2]):
        watch.add(torch.tensor(value, dtype=torch.float32), index, samples)
    reading = watch.read()
    assert reading.loss_sum == 1.5 + 0.25 * 8 + 0.5 * 8
    assert reading.first_bad_batch is None and reading.first_bad_value is None
    for index, (value, samples) in enumerate(losses[2:], start=2):
        watch.add(torch.tensor(value), index, samples)
    reading = watch.read()
    assert reading.first_bad_batch == 2 and math.isnan(reading.first_bad_value)  # the first one, not the inf


def test_channels_last_auto_is_for_convolutional_backbones_on_cuda():
    resnet, vit = create_detector("test_resnet"), create_detector("test_vit")
    assert is_convolutional(resnet) and not is_convolutional(vit)
    assert resolve_channels_last("auto", torch.device("cpu"), resnet) is False
    assert resolve_channels_last("auto", torch.device("cuda"), resnet) is True
    assert resolve_channels_last("auto", torch.device("cuda"), vit) is False
    assert resolve_channels_last(True, torch.device("cpu"), vit) is True
    with pytest.raises(ConfigError, match="train.channels_last='yes'"):
        resolve_channels_last("yes", torch.device("cpu"), vit)


def test_num_workers_auto_follows_cores_ranks_and_device(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_num_workers("auto", torch.device("cuda")) == 8
    assert resolve_num_workers("auto", torch.device("cpu")) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks share the 16 cores
    assert resolve_num_workers("auto", torch.device("cuda")) == 3
    assert resolve_num_workers("auto", torch.device("cpu")) == 2
    assert resolve_num_workers(5, torch.device("cpu")) == 5
    with pytest.raises(ConfigError, match="dataset.num_workers=-1"):
        resolve_num_workers(-1, torch.device("cpu"))
