"""Metric sinks: a CSV that survives crashes and resumes, and the trackers a user enables (TensorBoard
here; MLflow and W&B in deepfake.tracking.trackers).

Every tracker sees the same calls, with the same names: ``train/loss`` (the mean over the last log
interval) and ``lr/backbone``, ``lr/head`` every ``train.log_every_n_batches`` batches; ``epoch``,
``train/epoch_loss``, ``val/loss``, ``val/auc``, ``val/accuracy`` after each epoch; ``test/...`` after
the test. ``step`` is always the global optimizer step, so every curve shares one x axis.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepfake.errors import UserError
from deepfake.tracking.checkpoint import atomic_write_text

if TYPE_CHECKING:
    import numpy as np
    import torch


class Tracker:
    """A tracker that records nothing; real ones override what their backend can hold."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's flattened config (``optimizer.weight_decay: 0.05``), once, before training."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Numbers under their grouped names (module docstring) at the global optimizer step."""

    def log_image(self, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
        """``image`` is channels-first (C, H, W), float in [0, 1] or uint8."""

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        """A file of the run dir (metrics_test.json, report.html, the model card, best.pth)."""

    def resumed_at(self, step: int) -> None:
        """A resumed run goes on from optimizer step ``step`` (its last.pth's): what a killed process
        logged past it is about to be logged again, and should replace, not double, those points."""

    def close(self, status: str = "finished") -> None:
        """The task ended: ``finished``, ``failed`` (an error) or ``stopped`` (a stop signal, resumable)."""


class MetricsCsv:
    """``metrics_log.csv``: a fixed header, then one row per call, each row on disk before returning.

    Reopening an existing file (a resumed run) appends below its rows. The header must match:
    mixing columns in one file would shift every later value under the wrong name.
    """

    def __init__(self, path: str | os.PathLike[str], fieldnames: Sequence[str]) -> None:
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_header = self._keep_complete_rows()
        self._open()
        if not has_header:
            self._writer.writeheader()
            self._sync()

    def _open(self) -> None:
        self._handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (kept open until close)
        self._writer = csv.DictWriter(self._handle, fieldnames=self.fieldnames, extrasaction="raise")

    def _keep_complete_rows(self) -> bool:
        """Drop a last line cut short by a kill and check the header; return whether one exists."""
        if not self.path.exists():
            return False
        with open(self.path, "rb+") as handle:
            content = handle.read()
            if content and not content.endswith(b"\n"):
                content = content[: content.rfind(b"\n") + 1]
                handle.truncate(len(content))
        if not content:
            return False
        header = next(csv.reader([content.split(b"\n", 1)[0].decode("utf-8")]))
        if header != self.fieldnames:
            raise UserError(
                f"{self.path} has columns {','.join(header)} but this run logs {','.join(self.fieldnames)}; "
                "resume with the same settings or use a new run directory"
            )
        return True

    def drop_rows_after(self, column: str, last: int) -> int:
        """Keep only the rows whose integer ``column`` is at most ``last``; return how many were dropped.

        A resumed run calls it with the epoch it restored: rows logged after that save are logged again.
        """
        self._handle.close()
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        kept = [row for row in rows if int(row[column]) <= last]
        if len(kept) < len(rows):
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self.fieldnames)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.path, text.getvalue())
        self._open()
        return len(rows) - len(kept)

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row; missing columns stay empty, unknown ones raise ValueError."""
        try:
            self._writer.writerow(row)
            self._sync()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            # A cut-short row is dropped when the file is reopened, so the rows on disk stay whole.
            raise UserError(
                f"no space left on device while writing {self.path}; free some disk space and resume the run"
            ) from error

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Append ``metrics`` with ``step`` in the ``step`` column (which must be in the header)."""
        self.append({"step": step, **metrics})

    def _sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


# The metrics TensorBoard's HParams dashboard shows beside each run's hyperparameters.
HPARAM_METRICS = ("val/auc", "val/loss", "val/accuracy", "test/auc", "test/accuracy", "test/eer")


def hparam_value(value: Any) -> bool | int | float | str:
    """What the HParams plugin can hold: numbers, booleans and text (None and lists as text)."""
    return value if isinstance(value, bool | int | float | str) else str(value)


class TensorBoardLogger(Tracker):
    """Scalars, images and the HParams dashboard for ``tensorboard --logdir``, under ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike[str], flush_secs: int = 30) -> None:
        # Importing tensorboard takes seconds; pay it only in runs that enable this logger.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=os.fspath(log_dir), flush_secs=flush_secs)
        self._session_open = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The HParams dashboard's row for this run, written into the run's own event file (not a
        sub-run, as ``SummaryWriter.add_hparams`` makes): the metrics it shows are the scalars of
        :data:`HPARAM_METRICS` this run logs, so sweep jobs line up as rows of one table."""
        from torch.utils.tensorboard.summary import hparams

        experiment, session_start, _ = hparams(
            {name: hparam_value(value) for name, value in params.items()}, dict.fromkeys(HPARAM_METRICS, 0.0)
        )
        self._writer.file_writer.add_summary(experiment)
        self._writer.file_writer.add_summary(session_start)
        self._session_open = True

    def resumed_at(self, step: int) -> None:
        """What SummaryWriter(purge_step=) writes: a session start at ``step + 1``, from which TensorBoard
        drops the points of earlier event files (a killed process logged past its last.pth)."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self._writer.file_writer.add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            if value is not None and not isinstance(value, str):
                self._writer.add_scalar(name, value, global_step=step)

    def log_image(self, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
        self._writer.add_image(tag, image, global_step=step, dataformats="CHW")

    def close(self, status: str = "finished") -> None:
        if self._session_open:  # ends the HParams row with the run's own status
            self._writer.file_writer.add_summary(_session_end(status))
        self._writer.close()


# The HParams dashboard's session statuses; torch's hparams() only ever writes success.
# A run stopped to be resumed has no status of its own there: unknown, not a success.
TENSORBOARD_STATUS = {"finished": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "stopped": "STATUS_UNKNOWN"}


def _session_end(status: str):
    """The HParams session-end record of a run ended ``status`` (finished, failed, stopped)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    end = SessionEndInfo(status=Status.Value(TENSORBOARD_STATUS.get(status, "STATUS_UNKNOWN")))
    content = HParamsPluginData(session_end_info=end, version=PLUGIN_DATA_VERSION).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content))
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])
