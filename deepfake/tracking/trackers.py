"""MLflow and Weights & Biases behind the :class:`~deepfake.tracking.loggers.Tracker` calls, and the
guard that keeps a tracker that is down or misconfigured from costing the run.

Each tracker keeps its run's id in the run dir (``mlflow_run.json``, ``wandb_run.json``): a resumed
training reopens the same run dir, so it goes on logging into the same tracker run. The libraries are
imported only when their tracker is built: the project runs without them.
"""

from __future__ import annotations

import json
import logging
import netrc
import numbers
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from deepfake.errors import UserError
from deepfake.tracking.checkpoint import atomic_write_text
from deepfake.tracking.loggers import Tracker
from deepfake.tracking.run_info import CODE_DIR, git_info

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

MLFLOW_RUN_FILE = "mlflow_run.json"
WANDB_RUN_FILE = "wandb_run.json"
CHECKPOINT_SUFFIX = ".pth"


# How MLflow names the way a run ended (a stopped training is resumable: MLflow's KILLED).
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


class GuardedTracker(Tracker):
    """The tracker ``build`` makes, with every call passed on; the first exception, in building it or in
    any call, costs one warning and switches that tracker off for the rest of the run. A tracking server
    that is down must never cost a training: metrics_log.csv and run.log hold everything anyway."""

    def __init__(self, name: str, build: Callable[[], Tracker]) -> None:
        self.name = name
        self._tracker: Tracker | None = None
        self._tracker = self._guarded(build)

    def _guarded(self, call: Callable, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as error:  # noqa: BLE001 - whatever a tracker raises, the run goes on
            log.warning("%s: %s; this run goes on without it", self.name, _one_line(error))
            self._tracker = None
            return None

    def _pass_on(self, method: str, *args: Any) -> None:
        if self._tracker is not None:
            self._guarded(getattr(self._tracker, method), *args)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._pass_on("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._pass_on("log_metrics", metrics, step)

    def log_image(self, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
        self._pass_on("log_image", tag, image, step)

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        self._pass_on("log_artifact", path)

    def resumed_at(self, step: int) -> None:
        self._pass_on("resumed_at", step)

    def close(self, status: str = "finished") -> None:
        self._pass_on("close", status)
        self._tracker = None


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"


def _require(module: str, extra: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f'{what} needs the {module} package: pip install -e ".[{extra}]"') from None


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """What a metric store holds: numbers (None, text and flags are left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def _hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The (H, W, C) array both libraries take, from the channels-first image every task logs."""
    import numpy as np

    return np.asarray(image).transpose(1, 2, 0)


class MlflowTracker(Tracker):
    """One MLflow run per run dir, written through ``MlflowClient`` with an explicit run id: the fluent
    API's active run is process-global, so two trackers (or tasks) in one process would share it."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        tracking_uri: str,
        experiment: str = "deepfake",
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        source_dir: str | os.PathLike[str] | None = None,
        artifact_location: str | None = None,
        log_checkpoint: bool = False,
        http_retries: int = 2,
        http_timeout_s: int = 10,
    ) -> None:
        # MLflow's REST client reads these at every request. Its defaults (7 retries with a backoff
        # that doubles from 2 s, 120 s timeouts) would stall a run for minutes on a server that is down.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(http_retries))
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(http_timeout_s))
        mlflow = _require("mlflow", "mlflow", "MLflow tracking")
        self._client = mlflow.MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.log_checkpoint = log_checkpoint
        self._record = Path(run_dir) / MLFLOW_RUN_FILE
        self._logged_up_to: dict[str, int] = {}  # see resumed_at
        try:
            self.run_id = self._reopened_run() or self._new_run(
                experiment, run_name, _mlflow_tags(run_dir, tags, source_dir), artifact_location
            )
        except mlflow.exceptions.MlflowException as error:
            raise UserError(f"MLflow tracking at {tracking_uri} unreachable or refusing: {error}") from error

    def _reopened_run(self) -> str | None:
        """The run this run dir logged into before (a resumed training), marked running again."""
        if not self._record.is_file():
            return None
        record = json.loads(self._record.read_text(encoding="utf-8"))
        if record.get("tracking_uri") != self.tracking_uri:  # now tracked elsewhere: a new run there
            return None
        self._client.update_run(record["run_id"], status="RUNNING")
        log.info("MLflow: resuming run %s at %s", record["run_id"], self.tracking_uri)
        return record["run_id"]

    def _new_run(self, experiment: str, run_name: str | None, tags: dict, artifact_location: str | None) -> str:
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._create_experiment(experiment, artifact_location)
        run_id = self._client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        record = {"tracking_uri": self.tracking_uri, "experiment_id": experiment_id, "run_id": run_id}
        atomic_write_text(self._record, json.dumps(record, indent=2))
        log.info("MLflow: run %s in experiment %r at %s", run_id, experiment, self.tracking_uri)
        return run_id

    def _create_experiment(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.create_experiment(
                name, artifact_location=artifact_location or _local_artifacts(self.tracking_uri)
            )
        except MlflowException:  # a parallel sweep job created it first
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """In batches of MLflow's size limit, long values cut to its length limit. A resumed run keeps
        the values it was started with: MLflow refuses to change a logged param (``resume`` itself differs)."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        logged = self._client.get_run(self.run_id).data.params
        fresh = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in params.items() if key not in logged]
        for start in range(0, len(fresh), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, params=fresh[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def resumed_at(self, step: int) -> None:
        """MLflow cannot delete a logged point, so the points a killed process logged past ``step`` stay,
        and their replay is left out instead of doubling each of them (an exact resume replays the same
        values). Read once per metric, at the resume."""
        for key in self._client.get_run(self.run_id).data.metrics:
            last = max((point.step for point in self._client.get_metric_history(self.run_id, key)), default=step)
            if last > step:
                self._logged_up_to[key] = last

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now_ms = int(time.time() * 1000)
        points = [
            Metric(key, value, now_ms, int(step))
            for key, value in _numbers(metrics).items()
            if int(step) > self._logged_up_to.get(key, -1)
        ]
        for start in range(0, len(points), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=points[start : start + MAX_METRICS_PER_BATCH])

    def log_image(self, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
        self._client.log_image(self.run_id, _hwc(image), artifact_file=f"{tag}.png")

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        if Path(path).suffix != CHECKPOINT_SUFFIX or self.log_checkpoint:
            self._client.log_artifact(self.run_id, os.fspath(path))

    def close(self, status: str = "finished") -> None:
        self._client.set_terminated(self.run_id, MLFLOW_STATUS[status])


def _mlflow_tags(run_dir, tags: Mapping[str, Any] | None, source_dir) -> dict[str, str]:
    """The configured tags (a list, the run's ``tags=[...]``, as one tag each: ``baseline: true``), the
    run dir, and the code's commit where MLflow's UI shows it."""
    result = {"run_dir": str(run_dir)}
    for key, value in (tags or {}).items():
        if isinstance(value, Sequence) and not isinstance(value, str):
            result |= {str(label): "true" for label in value}
        elif value is not None:
            result[str(key)] = str(value)
    commit = git_info(CODE_DIR if source_dir is None else source_dir)["commit"]
    return result | ({"mlflow.source.git.commit": commit} if commit else {})


def _local_artifacts(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a local SQLite store, as ``mlflow server`` started in that folder uses;
    None (the server's own choice) for any other store."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return str(Path(tracking_uri[len(prefix) :]).resolve().parent / "mlartifacts")


class WandbTracker(Tracker):
    """One W&B run per run dir (its id kept in ``wandb_run.json``), its files under the run dir's
    ``wandb/``. ``mode`` None: online when an API key is configured, else offline (``wandb sync`` later)."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        project: str = "deepfake",
        entity: str | None = None,
        mode: str | None = None,
        run_name: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] = (),
        log_checkpoint: bool = False,
        init_timeout_s: int = 60,
    ) -> None:
        wandb = _require("wandb", "wandb", "Weights & Biases tracking")
        self._wandb = wandb
        self.log_checkpoint = log_checkpoint
        record = Path(run_dir) / WANDB_RUN_FILE
        run_id = json.loads(record.read_text(encoding="utf-8"))["run_id"] if record.is_file() else secrets.token_hex(6)
        self.mode = mode or ("online" if wandb_key_configured() else "offline")
        self._run = wandb.init(
            project=project, entity=entity, name=run_name, job_type=job_type, tags=[str(tag) for tag in tags] or None,
            id=run_id, resume="allow",
            dir=os.fspath(run_dir), mode=self.mode,
            reinit="create_new",  # its own run object, never the process-global wandb.run
            # run.log holds the console already; capturing it would also wrap the rich progress display.
            settings=wandb.Settings(silent=True, console="off", init_timeout=init_timeout_s),
        )  # fmt: skip
        if not record.is_file():
            atomic_write_text(record, json.dumps({"run_id": run_id, "project": project}, indent=2))
        log.info("W&B: run %s (%s) in %s", run_id, self.mode, self._run.dir)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run.config.update(dict(params), allow_val_change=True)  # a resumed run may change some

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(_numbers(metrics), step=int(step))

    def log_image(self, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
        self._run.log({tag: self._wandb.Image(_hwc(image))}, step=int(step))

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        """Copied into the run's files/ first: ``run.save`` would link it there, warning on every call."""
        path = Path(path)
        if path.suffix != CHECKPOINT_SUFFIX or self.log_checkpoint:
            copy = shutil.copy2(path, Path(self._run.dir) / path.name)
            self._run.save(copy, base_path=self._run.dir, policy="now")

    def close(self, status: str = "finished") -> None:
        offline_dir = Path(self._run.dir).parent
        self._run.finish(exit_code=0 if status == "finished" else 1)
        if self.mode == "offline":
            # A resumed run adds an offline-run-* folder of its own to the same W&B run: sync them all.
            log.info("W&B run saved offline; upload it with: wandb sync %s", offline_dir.parent / "offline-run-*")


def wandb_key_configured() -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or one that cannot be read
        return False
