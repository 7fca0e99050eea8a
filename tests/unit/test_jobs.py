"""A job's outcome: recorded, registered when training failed, and never the end of the process."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from deepfake.errors import ConfigError, RunStopped
from deepfake.tasks import jobs

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def job_cfg(tmp_path, monkeypatch):
    """A composed config whose Hydra run dir is tmp_path/run, as Hydra sets it up for a job."""
    monkeypatch.setattr(jobs, "_job_exit_codes", [])
    monkeypatch.setattr(jobs, "_sweep_exit_code", 0)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", "backbone=resnet18"], return_hydra_config=True)
    out = tmp_path / "run"
    out.mkdir()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    return cfg


def status(cfg) -> dict:
    return json.loads((Path(cfg.hydra.runtime.output_dir) / jobs.STATUS_FILE).read_text())


def test_success_returns_the_metric_and_records_it(job_cfg):
    assert jobs.run_job(job_cfg, lambda cfg: 0.75) == 0.75
    recorded = status(job_cfg)
    assert recorded["status"] == "finished" and recorded["value"] == 0.75 and recorded["exit_code"] == 0
    assert recorded["task"] == "train" and recorded["attempt"] == 1 and recorded["seconds"] >= 0
    assert jobs.exit_status() == 0


def test_a_single_run_that_fails_registers_nothing(job_cfg):
    jobs.run_job(job_cfg, lambda cfg: (_ for _ in ()).throw(ConfigError("bad value")))
    assert not Path(job_cfg.paths.registry).exists()
    assert jobs.exit_status() == 2


def test_a_bug_is_logged_with_its_traceback_and_exits_1(job_cfg, caplog):
    def buggy(cfg):
        raise RuntimeError("boom\nsecond line")

    with caplog.at_level(logging.ERROR):
        outcome = jobs.run_job(job_cfg, buggy)
    assert isinstance(outcome, jobs.FailedJob) and outcome.exit_code == 1 and outcome.error == "RuntimeError: boom"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None  # the traceback goes to run.log
    assert status(job_cfg)["status"] == "failed" and status(job_cfg)["exit_code"] == 1
    assert jobs.exit_status() == 1


def test_a_user_error_is_one_line_and_a_failed_sweep_job_is_registered(job_cfg, caplog, tmp_path):
    OmegaConf.set_readonly(job_cfg.hydra, False)  # HydraConfig locked it; a sweep job's config says MULTIRUN
    job_cfg.hydra.mode = RunMode.MULTIRUN
    job_cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(job_cfg)

    def mistaken(cfg):
        raise ConfigError("dataset.img_size=7 is too small; use 32 or more")

    with caplog.at_level(logging.ERROR):
        outcome = jobs.run_job(job_cfg, mistaken)
    assert outcome.exit_code == 2
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [outcome.error]
    assert all(r.exc_info is None for r in caplog.records)
    registry = json.loads(Path(job_cfg.paths.registry).read_text())
    [entry] = registry["runs"]
    assert entry["status"] == "failed" and entry["error"] == outcome.error and entry["backbone"] == "resnet18"
    assert entry["run_name"] == f"{tmp_path.name}/run" and status(job_cfg)["job_num"] == 3
    assert registry["best_run"] is None
    assert jobs.exit_status() == 2


def test_optuna_reads_a_failed_job_as_a_failed_trial():
    failed = jobs.FailedJob("backbone.name='x' is not a timm model", 2)
    with pytest.raises(ValueError, match="is not a timm model"):
        float(failed)


def test_a_stop_is_recorded_and_passed_on(job_cfg):
    def stopped(cfg):
        raise RunStopped(15)

    with pytest.raises(RunStopped):
        jobs.run_job(job_cfg, stopped)
    assert status(job_cfg)["status"] == "stopped"
    assert jobs.exit_status() == 0  # the entry point turns the stop itself into 128 + 15
    # The sweep summary reads it: without one, a stopped job counted as a bug (1).
    assert status(job_cfg)["exit_code"] == 143


def test_a_bug_in_one_job_is_not_hidden_by_another_jobs_user_error():
    """README: a sweep exits 2 when jobs failed, 1 if a job hit a bug; a stop signal's code otherwise wins."""
    from deepfake.tasks.jobs import worst_exit_code

    assert worst_exit_code([0, 2, 1, 2]) == 1
    assert worst_exit_code([0, 2, 0]) == 2
    assert worst_exit_code([2, 143]) == 143
    assert worst_exit_code([]) == 0


def test_a_relaunch_into_the_same_sweep_dir_summarises_only_its_own_jobs(tmp_path):
    """A fixed hydra.sweep.dir also holds an earlier launch's job dirs: they are not this sweep's."""
    import json
    import time as clock
    from datetime import datetime, timezone

    from deepfake.tasks.sweep_summary import summarize

    def job(name: str, started: float, status: str, exit_code: int) -> None:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        stamp = datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")
        (tmp_path / name / "status.json").write_text(json.dumps(
            {"status": status, "started_at": stamp, "exit_code": exit_code, "job_num": name[0], "overrides": [name]}))  # fmt: skip

    launched = clock.time()
    job("0_old", launched - 3600, "failed", 2)  # the earlier launch's failed job
    job("0_new", launched + 1, "finished", 0)

    assert [row["run_dir"] for row in summarize(tmp_path, [], since=launched)] == [str(tmp_path / "0_new")]
    assert len(summarize(tmp_path, [])) == 2  # without a launch time: every job dir there


def test_a_job_killed_before_it_made_a_dir_is_a_row_of_the_summary(tmp_path):
    """joblib's dead worker takes down jobs that had not started: no dir, so the launcher's word is all
    there is. A job killed after Hydra made its dir but before its status.json is named from .hydra/."""
    from deepfake.tasks.sweep_summary import _unstarted as unstarted
    from deepfake.tasks.sweep_summary import record_unstarted_job, summarize

    hydra_dir = tmp_path / "1_seed=2" / ".hydra"
    hydra_dir.mkdir(parents=True)
    OmegaConf.save({"hydra": {"job": {"num": 1}, "overrides": {"task": ["seed=2", "x=1"]}}}, hydra_dir / "hydra.yaml")
    unstarted.clear()
    record_unstarted_job(1, ["seed=2", "x=1"], "killed: its worker died")  # its dir is there: not twice
    record_unstarted_job(2, ["seed=3", "x=1"], "killed: its worker died")

    rows = summarize(tmp_path, [], unstarted=unstarted)
    assert [(row["job"], row["overrides"], row["status"], row["run_dir"]) for row in rows] == [
        (1, "seed=2", "no status", str(tmp_path / "1_seed=2")),
        (2, "seed=3", "killed", ""),
    ]
    assert rows[1]["error"] == "killed: its worker died" and rows[1]["exit_code"] == jobs.EXIT_BUG
    unstarted.clear()


def test_a_long_job_dir_name_is_cut_with_a_hash_of_the_whole():
    """Two jobs whose overrides differ only past the cut got one dir: a relaunch reused the other's result."""
    from deepfake.tasks.resolvers import DIR_SUFFIX_MAX, dir_suffix

    common = ",".join(f"optimizer.setting_{i}=0.05" for i in range(6))
    first, second = dir_suffix(f"{common},phase.lr_head=0.001"), dir_suffix(f"{common},phase.lr_head=0.1")
    assert first != second and len(first) == len(second) == DIR_SUFFIX_MAX + 1
    assert first.startswith("_optimizer.setting_0=0.05") and first == dir_suffix(f"{common},phase.lr_head=0.001")
    assert dir_suffix("name=expt 1") == "_name=expt-1" and dir_suffix(None) == ""  # short: as before


def _as_sweep_job(cfg, monkeypatch, launch: str) -> None:
    """``cfg`` as job 0 of the sweep launch ``launch`` (its summary callback names it in the environment)."""
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    monkeypatch.setenv(jobs.LAUNCH_ENV, launch)


def test_a_sweep_job_refused_by_a_live_writer_is_this_launchs_failed_row_and_leaves_the_writers_status(
    job_cfg, monkeypatch
):
    """Two launches into one hydra.sweep.dir: the refused job was left out of its launch's summary (the
    dir's status.json is the holder's), or listed as the holder's running job, killed (exit 1)."""
    from deepfake.tasks.sweep_summary import summarize
    from deepfake.tracking.run_lock import RunDirLock

    _as_sweep_job(job_cfg, monkeypatch, "ours")
    out = Path(job_cfg.hydra.runtime.output_dir)
    (out / ".hydra").mkdir()
    launched = time.time()
    holders = json.dumps({"status": "running", "launch": "theirs", "started_at": jobs.now_iso(), "job_num": 0,
                          "overrides": ["seed=1"], "task": "train"})  # fmt: skip
    (out / jobs.STATUS_FILE).write_text(holders)
    with RunDirLock(out):
        outcome = jobs.run_job(job_cfg, lambda cfg: 0.9)
    assert isinstance(outcome, jobs.FailedJob) and "PID" in outcome.error and jobs.exit_status() == 2
    assert (out / jobs.STATUS_FILE).read_text() == holders  # the holder's outcome, untouched
    assert not Path(job_cfg.paths.registry).exists()  # the holder's run to register, not this job's
    [row] = summarize(out.parent, [], since=launched, launch="ours")
    assert (row["status"], row["error"], row["exit_code"], row["run_dir"]) == ("refused", outcome.error, 2, str(out))
    assert summarize(out.parent, [], since=launched - 60, launch="theirs")[0]["status"] == "killed"  # theirs, once over


def test_a_sweep_job_with_a_mistyped_lock_setting_is_a_failed_registered_row(job_cfg, monkeypatch):
    from deepfake.tasks.sweep_summary import summarize

    _as_sweep_job(job_cfg, monkeypatch, "ours")
    job_cfg.run_lock.wait_s = -5
    out = Path(job_cfg.hydra.runtime.output_dir)
    (out / ".hydra").mkdir()
    outcome = jobs.run_job(job_cfg, lambda cfg: 0.9)
    assert outcome.error == "run_lock.wait_s=-5 must be 0 or more" and jobs.exit_status() == 2
    assert not (out / jobs.STATUS_FILE).exists()  # a later launch with the setting fixed runs the job afresh
    [entry] = json.loads(Path(job_cfg.paths.registry).read_text())["runs"]
    assert entry["status"] == "failed" and entry["error"] == outcome.error
    [row] = summarize(out.parent, [entry], launch="ours")
    assert (row["status"], row["error"], row["exit_code"]) == ("failed", outcome.error, 2)


@pytest.mark.parametrize("case", ["refused", "last.pth rewritten", "training failed", "no last.pth", "sweep job"])
def test_a_failed_resume_keeps_the_runs_status_only_when_it_left_the_run_as_it_was(job_cfg, case):
    """A resume refused before it trained or saved (another backbone) keeps the stopped run's status.json,
    the refusal under resume_failed; anything that changed the run, or a sweep job's failure, is failed."""
    from deepfake.errors import CheckpointError, TrainingError

    out = Path(job_cfg.hydra.runtime.output_dir)
    stopped = {"status": "stopped", "task": "train", "error": "RunStopped", "exit_code": 143, "launch": None}
    (out / jobs.STATUS_FILE).write_text(json.dumps(stopped))
    if case != "no last.pth":
        (out / "last.pth").write_bytes(b"the stopped run's state")
    OmegaConf.set_readonly(job_cfg.hydra, False)
    if case == "sweep job":
        job_cfg.hydra.mode = RunMode.MULTIRUN
        job_cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(job_cfg)
    job_cfg.resume = str(out)

    def resumed(cfg):
        if case == "last.pth rewritten":
            time.sleep(0.01)  # a new mtime, as a save of the first resumed epoch has
            (out / "last.pth").write_bytes(b"epoch 3, then a failure")
            raise CheckpointError("refused after a save")
        if case == "training failed":
            raise TrainingError("non-finite training loss at epoch 3, batch 1")
        raise CheckpointError("last.pth was trained with backbone 'test_resnet', not 'resnet18'")

    outcome = jobs.run_job(job_cfg, resumed)
    assert isinstance(outcome, jobs.FailedJob) and outcome.exit_code == 2
    recorded = status(job_cfg)
    if case == "refused":
        assert {key: recorded[key] for key in stopped} == stopped
        assert recorded["resume_failed"]["error"] == outcome.error and recorded["resume_failed"]["exit_code"] == 2
    else:
        assert recorded["status"] == "failed" and recorded["error"] == outcome.error and "resume_failed" not in recorded
