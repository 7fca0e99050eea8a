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
    if full == "checkpoint writes":  # (metrics_log.csv, written first, says its own)
        # Not "run again", which trained from the start: last.pth goes on from the training done.
        assert str(caught.value).endswith(
            f"free some disk space and resume with: python scripts/main.py resume={tmp_path}"
        )
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


class Killed(BaseException):
    """SIGKILL's stand-in: raised by a checkpoint write, it ends the run with nothing more saved."""


def harder_trainer(run_dir: Path, *, ema: bool, lr: float = 1e-2):
    """Faint stripes: validation AUC climbs every epoch (0.47, 0.99, 1.0; with train.ema 0.32, 0.51, 1.0),
    so the last epoch's end saves both checkpoints."""
    train = train_loader(Stripes(48, 1, stripe=0.3, noise=0.2), 8, seed=3)
    val = torch.utils.data.DataLoader(Stripes(32, 2, stripe=0.3, noise=0.2), batch_size=16)
    return tiny_trainer(
        run_dir, plan_phases(1, 2, lr_head=lr, lr_backbone=lr / 10, warmup_epochs=0.5), train, val,
        ema=partial(ModelEmaV3, decay=0.99, use_warmup=True) if ema else None,
    )  # fmt: skip


def _killed_at_epoch_three(run_dir: Path, monkeypatch, ema: bool, writes_before: int) -> None:
    """Train until the end of epoch 3 and kill the run there after ``writes_before`` checkpoint writes."""
    import deepfake.tracking.checkpoint_writer as writer

    written = []

    def save_or_die(obj, path):
        if obj["epoch"] == 3:
            if len(written) == writes_before:
                raise Killed
            written.append(path)
        return writer.atomic_save.__wrapped__(obj, path)

    save_or_die.__wrapped__ = writer.atomic_save
    monkeypatch.setattr(writer, "atomic_save", save_or_die)
    with pytest.raises(Killed):
        harder_trainer(run_dir, ema=ema).fit()
    monkeypatch.undo()


def _resumed_where_every_epoch_scores_worse(run_dir: Path, monkeypatch, ema: bool):
    """The resume, where an epoch trained again scores worse than it did (as on a GPU, which does not
    repeat its sums bit for bit): it never replaces best.pth."""
    monkeypatch.setattr("deepfake.engine.epoch_end.auc_or_none", lambda *args: 0.0)
    resumed = harder_trainer(run_dir, ema=ema)
    resumed.fit(resume=load_checkpoint(run_dir / "last.pth"))
    resumed.close()
    return resumed


def _assert_best_is_recorded(run_dir: Path, state) -> dict:
    """best.pth holds the epoch the state names the best, with the metrics its row of metrics_log.csv has."""
    best = load_checkpoint(run_dir / "best.pth")
    assert best["epoch"] == state.best_epoch
    (row,) = [row for row in metric_rows(run_dir) if int(row["epoch"]) == state.best_epoch]
    assert best["val_metrics"]["val_auc"] == float(row["val_auc"]) == round(state.best_auc, 6)
    return best


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_a_kill_between_the_checkpoints_of_a_best_epoch_leaves_the_best_pth_recorded(tmp_path, monkeypatch, ema):
    """Killed after the first of epoch 3's two checkpoint writes (best.pth was written first: it held
    epoch 3 while last.pth and the records said epoch 2, and kept the killed run's weights for good once
    the retrained epoch 3 scored worse). The resumed run's best.pth is the best epoch it records."""
    straight = harder_trainer(tmp_path / "straight", ema=ema)
    straight.fit()
    straight.close()
    assert straight.state.best_epoch == 3

    _killed_at_epoch_three(tmp_path / "killed", monkeypatch, ema, writes_before=1)
    resumed = _resumed_where_every_epoch_scores_worse(tmp_path / "killed", monkeypatch, ema)
    best = _assert_best_is_recorded(tmp_path / "killed", resumed.state)
    # Written again from last.pth: the very best.pth of the run never killed (the moving average under ema).
    assert resumed.state.best_epoch == 3 and resumed.state.not_exact is None
    assert_same_models(tmp_path / "straight" / "best.pth", tmp_path / "killed" / "best.pth")
    expected = load_checkpoint(tmp_path / "straight" / "best.pth")
    assert {k: v for k, v in best.items() if k != "model"} == {k: v for k, v in expected.items() if k != "model"}


@pytest.mark.parametrize("last_best", [2, 1], ids=["last_is_best", "earlier_best"])
def test_a_best_pth_ahead_of_last_pth_is_made_the_recorded_one(tmp_path, monkeypatch, last_best):
    """The state a version that wrote best.pth first left when killed between the two: best.pth of epoch 3,
    last.pth of epoch 2. When last.pth's epoch is the best, best.pth is written again from it; when an
    earlier epoch was (no saved state holds its weights any more), the best is chosen again from epoch 3,
    and the run is marked inexact."""
    from deepfake.tracking.checkpoint import atomic_save

    run_dir = tmp_path / "killed"
    harder_trainer(tmp_path / "straight", ema=False).fit()
    _killed_at_epoch_three(run_dir, monkeypatch, ema=False, writes_before=0)
    last = load_checkpoint(run_dir / "last.pth")
    assert last["trainer_state"]["best_epoch"] == 2
    if last_best == 1:  # as if epoch 2 had scored no better than epoch 1
        row = metric_rows(run_dir)[0]
        last["trainer_state"] |= {"best_epoch": 1, "best_auc": float(row["val_auc"])}
        atomic_save(last, run_dir / "last.pth")
    (run_dir / "best.pth").write_bytes((tmp_path / "straight" / "best.pth").read_bytes())  # epoch 3's

    resumed = _resumed_where_every_epoch_scores_worse(run_dir, monkeypatch, ema=False)
    _assert_best_is_recorded(run_dir, resumed.state)
    if last_best == 2:
        assert resumed.state.best_epoch == 2 and resumed.state.not_exact is None
    else:
        assert resumed.state.best_epoch == 3 and "no longer holds epoch 1" in resumed.state.not_exact
