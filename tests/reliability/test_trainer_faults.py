"""Faults inside the training loop, in-process on a tiny task: a real SIGTERM part-way through an
epoch (with and without DataLoader workers and gradient accumulation) must resume to the very same
bits as an uninterrupted run; a full disk must keep the previous checkpoint and say so; optimizer state
that cannot be loaded is refused under resume_strict, else replaced by a fresh optimizer with a warning."""

from __future__ import annotations

import csv
import errno
import multiprocessing
import os
import signal
from functools import partial
from pathlib import Path

import pytest
import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from deepfake.engine.loaders import train_loader
from deepfake.engine.phases import plan_phases
from deepfake.engine.trainer import Trainer
from deepfake.errors import CheckpointError, UserError
from deepfake.models import create_detector
from deepfake.tracking.checkpoint import load_checkpoint


class AugmentedStripes(torch.utils.data.Dataset):
    """Stripes (fake) vs noise (real), with noise drawn per sample from torch's RNG like an augmentation.

    With ``signal_on_load=k`` the k-th load (counted across worker processes) sends SIGTERM to the
    training process, so the stop lands wherever the loader happens to be.
    """

    def __init__(self, n: int, seed: int, signal_on_load: int | None = None):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=g) * 0.5
        self.targets = (torch.arange(n) % 2).float()
        self.images[self.targets == 1, :, :, ::2] += 1.0
        self.paths = [f"img{i}.jpg" for i in range(n)]
        self.signal_on_load = signal_on_load
        self.loads = multiprocessing.get_context("fork").Value("i", 0)
        self.trainer_pid = os.getpid()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if self.signal_on_load is not None:
            with self.loads.get_lock():
                self.loads.value += 1
                if self.loads.value == self.signal_on_load:
                    os.kill(self.trainer_pid, signal.SIGTERM)
        image = self.images[i] + 0.2 * torch.randn(3, 32, 32)
        return {"image": image, "target": self.targets[i], "index": i, "damaged": False}

    def damage_reason(self, i):
        return None


def make_trainer(run_dir: Path, *, workers: int = 0, accumulate: int = 1, signal_on_load: int | None = None,
                 ema: bool = False):  # fmt: skip
    torch.manual_seed(0)
    model = create_detector("test_resnet")
    train = train_loader(
        AugmentedStripes(48, 1, signal_on_load), 8, seed=3, num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )  # fmt: skip
    val = torch.utils.data.DataLoader(AugmentedStripes(32, 2), batch_size=16)
    return Trainer(
        model, train, val, plan_phases(1, 2, lr_head=1e-2, lr_backbone=1e-3, warmup_epochs=0.5),
        make_optimizer=partial(torch.optim.AdamW, weight_decay=0.01),
        make_scheduler=partial(CosineLRScheduler, lr_min=1e-6, warmup_lr_init=1e-6, warmup_prefix=True, t_in_epochs=False),
        device=torch.device("cpu"), run_dir=run_dir, accumulate_grad_batches=accumulate,
        describe={"model_spec": model.detector_spec, "preprocess": {**model.preprocess, "img_size": 32},
                  "labels": {"real_label": 1}, "threshold": 0.5, "run_name": "faults"},
        ema=partial(ModelEmaV3, decay=0.99, use_warmup=True) if ema else None,
    )  # fmt: skip


def metric_rows(run_dir: Path) -> list[dict]:
    rows = list(csv.DictReader((run_dir / "metrics_log.csv").open()))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_models(a: Path, b: Path) -> None:
    left, right = load_checkpoint(a), load_checkpoint(b)
    for weights in ("model", "ema_model"):  # the moving average of train.ema too
        if left.get(weights) is None:
            assert right.get(weights) is None
            continue
        assert left[weights].keys() == right[weights].keys()
        for key in left[weights]:
            assert torch.equal(left[weights][key], right[weights][key]), (weights, key)


@pytest.mark.parametrize(("workers", "accumulate", "ema"), [(0, 1, False), (2, 2, False), (0, 1, True)])
def test_sigterm_mid_epoch_then_resume_is_bitwise_exact(tmp_path, workers, accumulate, ema):
    make_trainer(tmp_path / "straight", workers=workers, accumulate=accumulate, ema=ema).fit()
    if ema:
        assert load_checkpoint(tmp_path / "straight" / "last.pth")["ema_model"] is not None

    # 48 train images in batches of 8: the 60th load falls in epoch 2's second batch.
    stopped = make_trainer(tmp_path / "stopped", workers=workers, accumulate=accumulate, signal_on_load=60, ema=ema)
    state = stopped.fit()
    assert stopped.stopped_early and stopped.stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are given back
    last = load_checkpoint(tmp_path / "stopped" / "last.pth")
    assert last["trainer_state"] == {**last["trainer_state"], "epoch": 1, "batches_done": state.batches_done}
    if workers == 0:
        assert state.batches_done == 2  # the batch being trained when the signal came, then stop
    assert state.batches_done % accumulate == 0
    assert len(metric_rows(tmp_path / "stopped")) == 1

    resumed = make_trainer(tmp_path / "stopped", workers=workers, accumulate=accumulate, ema=ema)
    resumed.fit(resume=load_checkpoint(tmp_path / "stopped" / "last.pth"))
    assert not resumed.stopped_early
    assert_same_models(tmp_path / "straight" / "best.pth", tmp_path / "stopped" / "best.pth")
    assert_same_models(tmp_path / "straight" / "last.pth", tmp_path / "stopped" / "last.pth")
    assert metric_rows(tmp_path / "stopped") == metric_rows(tmp_path / "straight")


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("full", ["every write", "checkpoint writes"])
def test_full_disk_in_epoch_two_keeps_epoch_one_and_says_so(tmp_path, monkeypatch, full):
    trainer = make_trainer(tmp_path)
    trainer.phases = plan_phases(2, 0, lr_head=1e-2, lr_backbone=0.0)
    end_epoch = trainer._end_epoch

    def disk_fills_after_epoch_one(*args, **kwargs):
        if trainer.state.epoch == 1:
            if full == "every write":
                monkeypatch.setattr(os, "fsync", _full_disk)
            else:
                monkeypatch.setattr(torch, "save", _full_disk)
        return end_epoch(*args, **kwargs)

    trainer._end_epoch = disk_fills_after_epoch_one
    with pytest.raises(UserError, match="no space left on device") as caught:
        trainer.fit()
    monkeypatch.undo()
    assert "\n" not in str(caught.value)
    assert load_checkpoint(tmp_path / "last.pth")["trainer_state"]["epoch"] == 1
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]

    # The epoch-2 row may have reached the CSV before the disk filled up; resuming drops and redoes it.
    resumed = make_trainer(tmp_path)
    resumed.phases = trainer.phases
    resumed.fit(resume=load_checkpoint(tmp_path / "last.pth"))
    assert [row["epoch"] for row in metric_rows(tmp_path)] == ["1", "2"]


@pytest.mark.parametrize("strict", [True, False], ids=["resume_strict", "lenient"])
def test_optimizer_state_that_cannot_be_loaded(tmp_path, caplog, strict):
    make_trainer(tmp_path, signal_on_load=60).fit()  # stopped in epoch 2, the first fine-tuning epoch
    last = load_checkpoint(tmp_path / "last.pth")
    groups = last["optimizer"]["param_groups"]
    groups.append({**groups[0], "params": []})  # the model's param groups have changed since
    resumed = make_trainer(tmp_path)
    resumed.resume_strict = strict
    if strict:
        with pytest.raises(CheckpointError, match="cannot be loaded .*; resume_strict=true refuses to go on"):
            resumed.fit(resume=last)
        return
    resumed.fit(resume=last)
    warnings = [r.getMessage() for r in caplog.records if "with a fresh optimizer" in r.getMessage()]
    assert len(warnings) == 1 and "last.pth cannot be loaded" in warnings[0]
    assert resumed.state.not_exact and load_checkpoint(tmp_path / "last.pth")["trainer_state"]["not_exact"] == (
        resumed.state.not_exact
    )
    assert [row["epoch"] for row in metric_rows(tmp_path)] == ["1", "2", "3"]
