"""Faults inside the training loop, in-process on a tiny task: a real SIGTERM part-way through an
epoch (with and without DataLoader workers and gradient accumulation) must resume to the very same
bits as an uninterrupted run; a full disk must keep the previous checkpoint and say so; optimizer state
that cannot be loaded is refused under resume_strict, else replaced by a fresh optimizer with a warning."""

from __future__ import annotations

import errno
import os
import signal
from functools import partial
from pathlib import Path

import pytest
import torch
from timm.utils import ModelEmaV3
from trainers import Stripes, assert_same_models, metric_rows, tiny_trainer

from deepfake.engine.loaders import train_loader
from deepfake.engine.phases import plan_phases
from deepfake.errors import CheckpointError, UserError
from deepfake.tracking.checkpoint import load_checkpoint


def make_trainer(run_dir: Path, *, workers: int = 0, accumulate: int = 1, signal_on_load: int | None = None,
                 ema: bool = False):  # fmt: skip
    """Augmented stripes (per-load noise from torch's RNG, which an exact resume must replay);
    ``signal_on_load=k`` makes the k-th image load SIGTERM this process."""
    train = train_loader(
        Stripes(48, 1, stripe=1.0, noise=0.2, signal_on_load=signal_on_load), 8, seed=3, num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )  # fmt: skip
    val = torch.utils.data.DataLoader(Stripes(32, 2, stripe=1.0, noise=0.2), batch_size=16)
    return tiny_trainer(
        run_dir,
        plan_phases(1, 2, lr_head=1e-2, lr_backbone=1e-3, warmup_epochs=0.5),
        train,
        val,
        weight_decay=0.01,
        run_name="faults",
        accumulate_grad_batches=accumulate,
        ema=partial(ModelEmaV3, decay=0.99, use_warmup=True) if ema else None,
    )


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
