"""Metric sinks: the resumable CSV and TensorBoard (deepfake.tracking.loggers)."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake.errors import RunStopped, UserError
from deepfake.tracking import loggers
from deepfake.tracking.loggers import MetricsCsv, TensorBoardLogger, Tracker

FIELDS = ["step", "phase", "train_loss", "val_auc"]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_header_once_then_one_durable_row_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(loggers.os, "fsync", lambda descriptor: (synced.append(descriptor), real_fsync(descriptor)))
    path = tmp_path / "run" / "metrics_log.csv"

    log = MetricsCsv(path, FIELDS)
    log.log_metrics({"phase": "head", "train_loss": 0.5, "val_auc": 0.75}, step=1)
    log.append({"step": 2, "phase": "finetune", "train_loss": 0.25})

    # Read while still open: each row must already be on disk.
    assert _rows(path) == [FIELDS, ["1", "head", "0.5", "0.75"], ["2", "finetune", "0.25", ""]]
    assert len(synced) == 3
    log.close()


def test_reopening_keeps_rows_and_does_not_repeat_the_header(tmp_path: Path) -> None:
    path = tmp_path / "metrics_log.csv"
    first = MetricsCsv(path, FIELDS)
    first.log_metrics({"phase": "head", "train_loss": 0.5, "val_auc": 0.7}, step=1)
    first.close()

    resumed = MetricsCsv(path, FIELDS)
    resumed.log_metrics({"phase": "head", "train_loss": 0.4, "val_auc": 0.8}, step=2)
    resumed.close()

    assert _rows(path) == [FIELDS, ["1", "head", "0.5", "0.7"], ["2", "head", "0.4", "0.8"]]


def test_row_cut_short_by_a_kill_is_dropped_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "metrics_log.csv"
    path.write_text("step,phase,train_loss,val_auc\r\n1,head,0.5,0.7\r\n2,he")

    log = MetricsCsv(path, FIELDS)
    log.log_metrics({"phase": "head", "train_loss": 0.4, "val_auc": 0.8}, step=2)
    log.close()

    assert _rows(path) == [FIELDS, ["1", "head", "0.5", "0.7"], ["2", "head", "0.4", "0.8"]]


def test_reopening_with_other_columns_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics_log.csv"
    MetricsCsv(path, ["step", "loss"]).close()

    with pytest.raises(UserError, match="has columns step,loss but this run logs") as caught:
        MetricsCsv(path, FIELDS)

    assert str(path) in str(caught.value)
    assert path.read_text().splitlines() == ["step,loss"]


def test_unknown_column_is_refused(tmp_path: Path) -> None:
    log = MetricsCsv(tmp_path / "metrics_log.csv", FIELDS)
    with pytest.raises(ValueError, match="val_acc"):
        log.log_metrics({"val_acc": 0.9}, step=1)
    log.close()
    assert _rows(tmp_path / "metrics_log.csv") == [FIELDS]


def test_tensorboard_scalars_and_images_are_written(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log_params({"optimizer.weight_decay": 0.05, "train.grad_clip_norm": None, "augment.scale": [0.8, 1.0]})
    logger.log_metrics({"val/auc": 0.5, "phase": "head", "train/loss": np.float32(0.25)}, step=1)
    logger.log_metrics({"val/auc": 0.75}, step=2)
    logger.log_image("cam/overlay", torch.rand(3, 8, 8), step=2)
    logger.close()

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/loss", "val/auc"]
    assert [(event.step, event.value) for event in events.Scalars("val/auc")] == [(1, 0.5), (2, 0.75)]
    # The HParams dashboard's row: the run's settings (None and lists as text), opened and closed.
    assert set(events.PluginTagToContent("hparams")) == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}  # fmt: skip
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info  # fmt: skip
    assert start.hparams["optimizer.weight_decay"].number_value == 0.05
    assert start.hparams["train.grad_clip_norm"].string_value == "None"
    assert start.hparams["augment.scale"].string_value == "[0.8, 1.0]"
    end = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_end_info"]).session_end_info  # fmt: skip
    assert end.status == 1  # STATUS_SUCCESS
    [image] = events.Images("cam/overlay")
    assert (image.step, image.width, image.height) == (2, 8, 8)


class _Recorder(Tracker):
    """A tracker that notes how the task said it ended."""

    ended: list[str] = []

    def close(self, status: str = "finished") -> None:
        _Recorder.ended.append(status)


def test_a_resumed_run_replaces_what_a_killed_process_logged_past_its_last_pth(tmp_path: Path) -> None:
    """Killed at step 5 with last.pth at step 3: the resumed run logs steps 4 and 5 again, and TensorBoard
    showed both copies (its curve ran backwards)."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    killed = TensorBoardLogger(tmp_path / "tb")
    for step in range(1, 6):
        killed.log_metrics({"train/loss": 1.0}, step=step)
    killed.close()
    time.sleep(1.1)  # event files are named by the second: the resumed run's sorts after
    resumed = TensorBoardLogger(tmp_path / "tb")
    resumed.resumed_at(3)
    for step in (4, 5):
        resumed.log_metrics({"train/loss": 0.5}, step=step)
    resumed.close()

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0),
        (2, 1.0),
        (3, 1.0),
        (4, 0.5),
        (5, 0.5),
    ]


@pytest.mark.parametrize(
    ("raised", "status"), [(None, "finished"), (RunStopped(15), "stopped"), (ValueError("a bug"), "failed")]
)
def test_the_task_tells_its_trackers_how_it_ended(raised, status) -> None:
    from omegaconf import OmegaConf

    from deepfake.tasks.session import trackers

    cfg = OmegaConf.create({"logger": {"recorder": {"_target_": f"{_Recorder.__module__}._Recorder"}}, "seed": 1})
    _Recorder.ended.clear()
    expected = pytest.raises(type(raised)) if raised is not None else contextlib.nullcontext()
    with expected, trackers(cfg):
        if raised is not None:
            raise raised
    assert _Recorder.ended == [status]


@pytest.mark.parametrize(("status", "shown"), [("failed", "STATUS_FAILURE"), ("stopped", "STATUS_UNKNOWN")])
def test_tensorboard_ends_the_hparams_row_with_the_runs_own_status(tmp_path: Path, status: str, shown: str) -> None:
    """torch's hparams() writes success whatever happened: a failed sweep job looked finished."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log_params({"seed": 1})
    logger.close(status=status)

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    end = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_end_info"]).session_end_info  # fmt: skip
    assert api_pb2.Status.Name(end.status) == shown
