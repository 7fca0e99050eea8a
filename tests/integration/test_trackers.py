"""MLflow and W&B as a user runs them: a real ``mlflow server`` on 127.0.0.1 read back with MlflowClient,
W&B's offline run file read back record by record, and a tracking server that is down."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY, run_main
from helpers import only_dir

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A port nothing listens on (the OS's pick, released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "metrics_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a SQLite store and proxied artifacts under a temp dir; its URL."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
        "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    with open(folder / "server.log", "wb") as server_log:
        # Its own process group: the server's workers end with it.
        server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, cwd=folder,
                                  start_new_session=True)  # fmt: skip
    try:
        started = time.monotonic()
        while not _healthy(url):
            assert server.poll() is None, (folder / "server.log").read_text()
            assert time.monotonic() - started < 120, "mlflow server did not answer /health within 120 s"
            time.sleep(0.25)
        print(f"mlflow server answered /health after {time.monotonic() - started:.1f} s")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_training_logs_params_metrics_test_and_files_to_a_real_mlflow_server(tmp_path, main_runner, mlflow_server):
    from mlflow import MlflowClient

    main_runner(
        "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={mlflow_server}", "name=nm", "tags=[baseline]"
    )
    run = only_dir(tmp_path / "outputs" / "train")
    assert "WARNING" not in (run / "run.log").read_text()
    assert any((run / "tb").iterdir())  # both trackers of the list ran
    record = json.loads((run / "mlflow_run.json").read_text())
    assert record["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    logged = client.get_run(record["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == run.name
    assert client.get_experiment(logged.info.experiment_id).name == "deepfake"
    params = logged.data.params
    assert params["phase.head_epochs"] == "1" and params["backbone.name"] == "test_resnet", len(params)
    assert logged.data.tags["task"] == "train" and logged.data.tags["run_dir"] == str(run)
    assert logged.data.tags["name"] == "nm" and logged.data.tags["baseline"] == "true"  # name= and tags=[...]

    rows = metrics_rows(run)
    steps = [int(r["step"]) for r in rows]

    def history(name: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(record["run_id"], name)]

    for name, column in {"val/auc": "val_auc", "val/loss": "val_loss", "train/epoch_loss": "train_loss"}.items():
        assert history(name) == [(step, pytest.approx(float(r[column]), abs=1e-6)) for step, r in zip(steps, rows)]
    loss_steps = [step for step, _ in history("train/loss")]
    assert loss_steps == sorted(loss_steps) and len(loss_steps) >= len(rows) and loss_steps[-1] == steps[-1]
    test = json.loads((run / "metrics_test.json").read_text())
    for name in ("auc", "accuracy", "eer", "ap", "log_loss"):
        assert history(f"test/{name}") == [(steps[-1], pytest.approx(test[name], abs=1e-6))], name

    files = _artifacts(client, record["run_id"])
    assert {"metrics_test.json", "report.html", "model_card.md", "eval/roc.png"} <= files, files
    assert "best.pth" not in files  # logger.mlflow.log_checkpoint=false
    print(
        f"{len(params)} params, {len(loss_steps)} train/loss points, {len(rows)} val/auc points, files {sorted(files)}"
    )


def _artifacts(client, run_id: str, folder: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, folder):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_a_resumed_run_dir_goes_on_in_the_same_mlflow_run(tmp_path, mlflow_server):
    """What a resumed training does with its run dir: the same MLflow run, running again, its first
    params kept (MLflow refuses to change one) and the new ones added."""
    from mlflow import MlflowClient

    from deepfake.tracking.trackers import MlflowTracker

    first = MlflowTracker(tmp_path, mlflow_server, experiment="resume-test", run_name="r")
    first.log_params({"resume": None, "seed": 1, "long": "x" * 10_000})
    first.log_metrics({"val/auc": 0.5}, step=4)
    first.close()
    resumed = MlflowTracker(tmp_path, mlflow_server, experiment="resume-test", run_name="r")
    assert resumed.run_id == first.run_id
    client = MlflowClient(mlflow_server)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    resumed.log_params({"resume": str(tmp_path), "seed": 1, "init_from": "x.pth"})
    resumed.log_metrics({"val/auc": 0.75}, step=8)
    resumed.close("stopped")  # a stop signal ended the task: resumable, MLflow's KILLED
    logged = client.get_run(first.run_id)
    assert logged.info.status == "KILLED"
    assert logged.data.params["resume"] == "None" and logged.data.params["init_from"] == "x.pth"
    assert len(logged.data.params["long"]) == 6000  # cut to MLflow's limit instead of refused
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "val/auc")] == [(4, 0.5), (8, 0.75)]
    assert len(client.search_runs([logged.info.experiment_id])) == 1


def test_a_resumed_run_does_not_double_the_points_its_killed_process_logged(tmp_path, mlflow_server):
    """Killed at step 9 after its last.pth at step 4: the resumed run replays steps 5-9 and goes on. MLflow
    cannot delete a point, so each replayed one is left out; each step is in the history once."""
    from mlflow import MlflowClient

    from deepfake.tracking.trackers import MlflowTracker

    killed = MlflowTracker(tmp_path, mlflow_server, experiment="replay-test", run_name="r")
    for step in range(1, 10):
        killed.log_metrics({"train/loss": 1.0 / step, **({"val/auc": 0.5} if step == 4 else {})}, step=step)
    resumed = MlflowTracker(tmp_path, mlflow_server, experiment="replay-test", run_name="r")
    resumed.resumed_at(4)
    for step in range(5, 13):
        resumed.log_metrics({"train/loss": 1.0 / step, **({"val/auc": 0.75} if step == 8 else {})}, step=step)
    resumed.close()
    client = MlflowClient(mlflow_server)
    loss = [(m.step, m.value) for m in client.get_metric_history(resumed.run_id, "train/loss")]
    assert sorted(loss) == [(step, 1.0 / step) for step in range(1, 13)]
    assert sorted((m.step, m.value) for m in client.get_metric_history(resumed.run_id, "val/auc")) == [
        (4, 0.5), (8, 0.75)
    ]  # fmt: skip


def test_a_tracking_server_that_is_down_costs_one_warning_and_the_others_go_on(tmp_path, shared_data_dir, monkeypatch):
    """MLflow on a closed port beside W&B offline (no API key): one warning naming the tracker, a
    finished run, and the W&B offline run holding everything, read back from its own file."""
    for name in ("WANDB_API_KEY", "WANDB_MODE"):  # no key, no mode: offline by default
        monkeypatch.delenv(name, raising=False)
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_main(
        tmp_path, *TINY, "logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={closed}", data_dir=shared_data_dir,
        env={"HOME": str(tmp_path)},  # no ~/.netrc either
    )  # fmt: skip
    print(f"the run with a tracker down took {time.monotonic() - started:.1f} s")
    run = only_dir(tmp_path / "outputs" / "train")
    warnings = [line for line in (run / "run.log").read_text().splitlines() if "[WARNING]" in line]
    assert len(warnings) == 1 and "logger.mlflow" in warnings[0] and closed in warnings[0], warnings
    assert "this run goes on without it" in warnings[0]
    assert (result.stdout + result.stderr).count("this run goes on without it") == 1
    assert not (run / "mlflow_run.json").exists()
    rows = metrics_rows(run)
    assert [r["phase"] for r in rows] == ["head", "finetune"]
    test = json.loads((run / "metrics_test.json").read_text())

    run_id = json.loads((run / "wandb_run.json").read_text())["run_id"]
    (offline,) = (run / "wandb").glob(f"offline-run-*-{run_id}")
    records = _wandb_records(offline / f"run-{run_id}.wandb")
    config = {item.key: json.loads(item.value_json) for r in records.get("config", []) for item in r.config.update}
    assert config["phase.head_epochs"] == 1 and config["backbone.name"] == "test_resnet"
    rows_by_step = {}
    for r in records["history"]:
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        rows_by_step[row["_step"]] = row
    for r in rows:
        assert rows_by_step[int(r["step"])]["val/auc"] == pytest.approx(float(r["val_auc"]), abs=1e-6)
    assert rows_by_step[int(rows[-1]["step"])]["test/auc"] == pytest.approx(test["auc"], abs=1e-6)
    saved = {f.path for r in records["files"] for f in r.files.files}
    assert {"metrics_test.json", "report.html", "model_card.md"} <= saved, saved
    assert json.loads((offline / "files" / "metrics_test.json").read_text())["auc"] == test["auc"]


def _wandb_records(path: Path) -> dict[str, list]:
    """The records of a W&B run file by type: protobuf ``Record``s in LevelDB's log format (32 KiB
    blocks, each chunk with a 7-byte header: checksum, length, type) after a 7-byte ``:W&B`` header."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, full, last = path.read_bytes(), 32768, 1, 4
    assert data[:4] == b":W&B"
    records, pending, position = {}, b"", 7
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (full, last):
            record = Record.FromString(pending)
            records.setdefault(record.WhichOneof("record_type"), []).append(record)
            pending = b""
    return records
