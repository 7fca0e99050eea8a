"""The fast path's pieces: the loss read back only now and then, and the `auto` settings."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from deepfake.engine.fast_path import is_convolutional, resolve_channels_last, resolve_compile, resolve_num_workers
from deepfake.engine.loss_watch import LossWatch
from deepfake.engine.trainer import place_model
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


def test_the_trainer_places_a_convolutional_model_in_nhwc_and_refuses_sync_batchnorm_off_cuda():
    model = place_model(create_detector("test_resnet"), torch.device("cpu"), sync_batchnorm=False, channels_last=True)
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert not any(p.is_contiguous() for p in weights if p.shape[-1] > 1)  # NCHW and NHWC differ past 1x1
    with pytest.raises(ConfigError, match="train.sync_batchnorm=true needs CUDA devices"):
        place_model(create_detector("test_resnet"), torch.device("cpu"), sync_batchnorm=True, channels_last=False)


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
    for bad in (2.5, True, "two"):  # int() made 2.5 two workers and YAML's true one
        with pytest.raises(ConfigError, match=f"dataset.num_workers={bad!r}; use auto or a whole number >= 0"):
            resolve_num_workers(bad, torch.device("cpu"))
    assert resolve_num_workers("3", torch.device("cpu")) == 3


def test_train_compile_trains_like_eager_and_saves_a_plain_checkpoint(tmp_path):
    """train.compile through torch.compile with aot_eager: dynamo's graph capture and AOTAutograd's
    forward and backward graphs, without inductor's C++ code generation (a minute on this CPU)."""
    from trainers import stripes_trainer

    from deepfake.engine.phases import plan_phases
    from deepfake.models import detector_from_checkpoint
    from deepfake.tracking.checkpoint import load_checkpoint

    histories = {}
    for backend in (None, resolve_compile("aot_eager")):
        run_dir = tmp_path / f"compile_{backend}"
        trainer = stripes_trainer(run_dir, plan_phases(1, 1, lr_head=1e-2, lr_backbone=1e-3), compile_model=backend)
        trainer.fit()
        histories[backend] = [float(row["train_loss"]) for row in csv.DictReader((run_dir / "metrics_log.csv").open())]
        best = load_checkpoint(run_dir / "best.pth")
        # The unwrapped model is saved: no torch.compile prefixes, loadable without compiling.
        assert not any(key.startswith("_orig_mod.") for key in best["model"])
        detector_from_checkpoint(best)
    assert histories["aot_eager"] == pytest.approx(histories[None], rel=1e-4)


def test_train_compile_takes_true_false_or_a_backend_name():
    assert resolve_compile(False) is None and resolve_compile("false") is None
    assert resolve_compile(True) == "inductor" and resolve_compile("aot_eager") == "aot_eager"
    with pytest.raises(ConfigError, match="train.compile='turbo'; use false, true"):
        resolve_compile("turbo")
