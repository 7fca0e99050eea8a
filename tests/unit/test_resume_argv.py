"""resume=...: the command line scripts/main.py hands to Hydra, and the checks on what a run dir says."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deepfake.errors import ConfigError, RunDirLocked
from deepfake.tasks.resume import check_resumed_config, load_last_checkpoint
from deepfake.tasks.resume_argv import PREVIOUS_OVERRIDES_ENV, PREVIOUS_STATUS_ENV, _rewrite, _RunFinished
from deepfake.tracking.loggers import MetricsCsv
from deepfake.tracking.registry import Registry
from deepfake.tracking.run_lock import RunDirLock

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(autouse=True)
def _root_in_tmp_path(tmp_path, monkeypatch):
    """paths.root_dir defaults to DEEPFAKE_ROOT (or "."): without this, a resume reads the registry of
    whatever directory pytest runs in, the repository's own models/."""
    monkeypatch.setenv("DEEPFAKE_ROOT", str(tmp_path))


def _run_dir(root: Path, name: str, overrides: list[str]) -> Path:
    run_dir = root / "outputs" / "train" / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return run_dir


def test_without_resume_the_command_line_is_untouched():
    argv = ["-m", "seed=1,2", "backbone=resnet50"]
    assert _rewrite(argv, CONF_DIR) is argv
    assert _rewrite(["resume=false", "seed=3"], CONF_DIR) == ["resume=false", "seed=3"]


def test_resume_a_run_dir_with_its_own_overrides_and_later_ones_winning(tmp_path):
    run_dir = _run_dir(tmp_path, "2026-01-01_00-00-00_aaaa", ["backbone=timm", "seed=1", "phase.head_epochs=2"])
    argv = _rewrite(["seed=5", f"resume={run_dir}", "train.do_test=false"], CONF_DIR)
    assert argv == [
        "backbone=timm", "seed=5", "phase.head_epochs=2", "train.do_test=false",
        f"resume='{run_dir}'", f"hydra.run.dir='{run_dir}'",
    ]  # fmt: skip


def test_resuming_an_optuna_trial_resumes_the_trial_not_the_search(tmp_path):
    """A trial's overrides name the search (hparams_search=optuna), which made Hydra sweep again."""
    trial = ["hparams_search=optuna", "phase.lr_head=0.0003", "seed=1"]
    run_dir = _run_dir(tmp_path, "2026-01-01_00-00-00_aaaa", trial)
    argv = _rewrite([f"resume={run_dir}"], CONF_DIR)
    assert argv == ["phase.lr_head=0.0003", "seed=1", f"resume='{run_dir}'", f"hydra.run.dir='{run_dir}'"]


def test_resume_true_takes_the_most_recently_started_run(tmp_path):
    _run_dir(tmp_path, "2026-01-01_00-00-00_aaaa", ["seed=1"])
    latest = _run_dir(tmp_path, "2026-01-02_00-00-00_bbbb", ["seed=2"])
    (tmp_path / "outputs" / "train" / "2026-01-03_no_hydra_dir").mkdir()  # not a run dir: ignored
    argv = _rewrite([f"paths.root_dir={tmp_path}", "resume=true"], CONF_DIR)
    assert argv[-2:] == [f"resume='{latest}'", f"hydra.run.dir='{latest}'"] and "seed=2" in argv


def _ended(
    run_dir: Path, status: str, exit_code: int | None = None, error: str | None = None, started: str | None = None
) -> Path:
    """The files a run leaves when it ends that way (a refused setting: logs and tb/, no checkpoint)."""
    ended = {"status": status, "exit_code": exit_code, "error": error}
    (run_dir / "status.json").write_text(json.dumps(ended | ({"started_at": started} if started else {})))
    (run_dir / "run.log").write_text(f"ERROR {error}\n" if error else "")
    (run_dir / "tb").mkdir()
    return run_dir


def test_resume_true_takes_the_run_started_last_whatever_its_dirs_name(tmp_path, capsys):
    """Run dirs were sorted by name: hydra.run.dir=expA, stopped first, sorted after a later stamped run
    and was resumed instead; and a run finished into its own paths.models_dir was not passed over."""
    older = _ended(_run_dir(tmp_path, "expA", ["seed=1"]), "stopped", started="2026-01-01T00:00:00+00:00")
    newer = _ended(_run_dir(tmp_path, "2026-01-02_00-00-00_bbbb_newer", ["seed=2"]), "stopped",
                   started="2026-01-02T00:00:00+00:00")  # fmt: skip
    finished = _ended(_run_dir(tmp_path, "zzz", ["seed=3", f"paths.models_dir={tmp_path / 'elsewhere'}"]),
                      "finished", 0, started="2026-01-03T00:00:00+00:00")  # fmt: skip
    for run_dir in (older, newer, finished):
        (run_dir / "last.pth").write_bytes(b"checkpoint")

    argv = _rewrite([f"paths.root_dir={tmp_path}", "resume=true"], CONF_DIR)

    assert argv[-2:] == [f"resume='{newer}'", f"hydra.run.dir='{newer}'"] and "seed=2" in argv
    assert f"passed over 1 newer run(s): {finished.name}: it has finished" in capsys.readouterr().out


def test_resume_true_passes_over_newer_runs_that_failed_on_a_users_mistake(tmp_path, capsys):
    """Run A stopped by SIGTERM, then run B refused (dataset.batch_size=0): resume=true picked B, which
    failed again on the same line, and A was never found."""
    stopped = _ended(_run_dir(tmp_path, "2026-01-01_00-00-00_aaaa", ["seed=1"]), "stopped")
    (stopped / "last.pth").write_bytes(b"checkpoint")
    typo = "dataset.batch_size=0 must be a positive integer"
    for name in ("2026-01-02_00-00-00_bbbb", "2026-01-03_00-00-00_cccc"):
        _ended(_run_dir(tmp_path, name, ["dataset.batch_size=0"]), "failed", 2, typo)
    argv = _rewrite([f"paths.root_dir={tmp_path}", "resume=true"], CONF_DIR)
    assert argv[-2:] == [f"resume='{stopped}'", f"hydra.run.dir='{stopped}'"] and "seed=1" in argv
    said = capsys.readouterr().out
    assert f"resume=true: {stopped}, the newest run that can go on; passed over 2 newer run(s): " in said
    assert f"2026-01-03_00-00-00_cccc: it failed on a user's mistake before saving a checkpoint ({typo})" in said

    # A failed run that saved a checkpoint can go on, and so can one that failed with a bug (fixed since).
    for name, exit_code, saved in (("2026-01-04_00-00-00_dddd", 2, "best.pth"), ("2026-01-05_00-00-00_eeee", 1, None)):
        run_dir = _ended(_run_dir(tmp_path, name, ["seed=4"]), "failed", exit_code, "nan loss")
        if saved:
            (run_dir / saved).write_bytes(b"weights")
        assert _rewrite([f"paths.root_dir={tmp_path}", "resume=true"], CONF_DIR)[-1] == f"hydra.run.dir='{run_dir}'"


def test_resume_true_passes_over_newer_runs_that_finished_or_are_being_written(tmp_path, capsys):
    """Run A stopped, then run B finished and run C still training: resume=true took C (refused: a live
    writer) or B ("has already finished", exit 0) and never found A, which README says it resumes."""
    stopped = _ended(_run_dir(tmp_path, "2026-01-01_00-00-00_aaaa", ["seed=1"]), "stopped")
    (stopped / "last.pth").write_bytes(b"checkpoint")
    finished = _ended(_run_dir(tmp_path, "2026-01-02_00-00-00_bbbb", ["seed=2"]), "finished")
    best = finished / "best.pth"
    best.write_bytes(b"weights")
    registry = Registry(tmp_path / "models" / "model_metadata.json", tmp_path / "models" / "best_model.pth")
    registry.register_run({"run_name": finished.name, "run_dir": str(finished), "status": "finished",
                           "best_val_auc": 0.9, "ended_at": "2026-01-02T01:00:00+00:00"}, best)  # fmt: skip
    live = _run_dir(tmp_path, "2026-01-03_00-00-00_cccc", ["seed=3"])
    with RunDirLock(live):  # held by this (live) process
        argv = _rewrite([f"paths.root_dir={tmp_path}", "resume=true"], CONF_DIR)
    assert argv[-2:] == [f"resume='{stopped}'", f"hydra.run.dir='{stopped}'"] and "seed=1" in argv
    said = capsys.readouterr().out
    assert (
        f"passed over 2 newer run(s): {live.name}: a live process is writing it; {finished.name}: it has finished"
        in said
    )

    (stopped / "last.pth").unlink()
    (stopped / "status.json").write_text(json.dumps({"status": "failed", "exit_code": 2, "error": "typo"}))
    registry.register_run({"run_name": live.name, "run_dir": str(live), "status": "finished", "best_val_auc": 0.8,
                           "ended_at": "2026-01-03T01:00:00+00:00"}, best)  # fmt: skip
    # now nothing can go on: the newest is named, with why
    with pytest.raises(ConfigError, match=f"no run to resume under .* \\(the newest, {live.name}: it has finished\\)"):
        _rewrite([f"paths.root_dir={tmp_path}", "resume=true"], CONF_DIR)


def test_resume_true_with_only_runs_that_failed_on_a_users_mistake_has_no_run_to_resume(tmp_path):
    _ended(_run_dir(tmp_path, "2026-01-02_00-00-00_bbbb", []), "failed", 2, "dataset.batch_size=0 must be ...")
    with pytest.raises(ConfigError, match="resume=true: no run to resume under .*; start one without resume"):
        _rewrite([f"paths.root_dir={tmp_path}", "resume=true"], CONF_DIR)


@pytest.mark.parametrize(
    ("status", "error", "said"),
    [
        ("stopped", None, "it was stopped during its first epoch"),
        ("failed", "dataset.batch_size=0 must be a positive integer",
         "it failed before its first epoch ended: dataset.batch_size=0 must be a positive integer"),
        ("running", None, "it was killed during its first epoch"),
    ],
)  # fmt: skip
def test_a_run_without_last_pth_is_started_over_saying_how_it_ended(tmp_path, monkeypatch, caplog, status, error, said):
    """The task rewrites status.json before it reads last.pth: the line said "stopped" of a failed run."""
    for name in (PREVIOUS_OVERRIDES_ENV, PREVIOUS_STATUS_ENV):
        monkeypatch.delenv(name, raising=False)  # _rewrite sets them in this process: put back after
    run_dir = _ended(_run_dir(tmp_path, "run", ["seed=1"]), status, 2 if error else None, error)
    _rewrite([f"paths.root_dir={tmp_path}", f"resume={run_dir}"], CONF_DIR)
    (run_dir / "status.json").write_text('{"status": "running"}')  # as the resumed task writes it
    with caplog.at_level(logging.WARNING, logger="deepfake.tasks.resume"):
        assert load_last_checkpoint(run_dir, model=None) is None
    assert caplog.messages == [f"{run_dir} has no last.pth yet ({said}): starting it over"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["resume=true"], "no run to resume under"),
        (["resume=/nonexistent/run"], "no such run dir"),
        (["-m", "resume=RUN"], "not a sweep"),
        (["hparams_search=optuna", "resume=RUN"], "not a sweep"),
        (["resume=RUN", "hydra.run.dir=/elsewhere"], "drop hydra.run.dir"),
        # It said "a task=test run dir" of a training run: the typed task is the mistake.
        (["resume=RUN", "task=test"], "^resume continues a stopped training run, not task=test; drop resume="),
        (["resume=RUN", "experiment=null"], "cannot compose the config"),  # was a ValueError traceback
    ],
)
def test_resume_mistakes_are_one_line_config_errors(tmp_path, argv, message):
    run_dir = _run_dir(tmp_path, "run", [])
    argv = [f"paths.root_dir={tmp_path / 'empty'}", *(a.replace("RUN", str(run_dir)) for a in argv)]
    with pytest.raises(ConfigError, match=message):
        _rewrite(argv, CONF_DIR)


def test_a_run_dir_whose_overrides_touch_hydra_is_refused(tmp_path):
    run_dir = _run_dir(tmp_path, "run", ["seed=1", "hydra/launcher=joblib"])
    with pytest.raises(ConfigError, match="changes Hydra's own settings"):
        _rewrite([f"resume={run_dir}"], CONF_DIR)


def test_only_allowlisted_targets_survive_in_a_resumed_config(tmp_path):
    cfg = OmegaConf.create({
        "resume": str(tmp_path),
        "optimizer": {"_target_": "torch.optim.AdamW"},
        "logger": {"tb": {"_target_": "deepfake.tracking.loggers.TensorBoardLogger"}},
        "steps": [{"_target_": "timm.scheduler.CosineLRScheduler"}],
    })  # fmt: skip
    check_resumed_config(cfg, tmp_path)
    cfg.steps[0]._target_ = "os.system"
    with pytest.raises(ConfigError, match=r"steps\.0\._target_='os.system'"):
        check_resumed_config(cfg, tmp_path)
    with pytest.raises(ConfigError, match="must be launched with scripts/main.py"):
        check_resumed_config(OmegaConf.create({"resume": True}), tmp_path)


def test_metrics_rows_logged_after_the_restored_epoch_are_dropped(tmp_path):
    path = tmp_path / "metrics_log.csv"
    log = MetricsCsv(path, ["epoch", "val_auc"])
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "val_auc": epoch / 10})
    assert log.drop_rows_after("epoch", 1) == 2
    log.append({"epoch": 2, "val_auc": 0.25})
    log.close()
    assert path.read_text().splitlines() == ["epoch,val_auc", "1,0.1", "2,0.25"]


def test_a_run_dir_being_written_is_refused_before_hydra_opens_it(tmp_path):
    run_dir = _run_dir(tmp_path, "run", ["seed=1"])
    with RunDirLock(run_dir):  # held by this (live) process
        for argv in ([f"resume={run_dir}"], [f"hydra.run.dir={run_dir}", "seed=2"]):
            with pytest.raises(RunDirLocked, match=f"is being written by PID {os.getpid()}"):
                _rewrite([f"paths.root_dir={tmp_path}", *argv], CONF_DIR)
    with pytest.raises(ConfigError, match=f"hydra.run.dir={run_dir} already holds a run \\(task=train\\); continue a "
                                          f"stopped training with resume={run_dir}, or give a new dir"):  # fmt: skip
        _rewrite([f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}"], CONF_DIR)
    bench = _run_dir(tmp_path, "bench", ["task=bench"])  # resume= is no advice for another task's dir
    with pytest.raises(ConfigError, match=r"already holds a run \(task=bench\); give a new dir"):
        _rewrite([f"paths.root_dir={tmp_path}", f"hydra.run.dir={bench}"], CONF_DIR)
    empty = tmp_path / "empty"
    empty.mkdir()  # a dir without a run in it is any run's to take
    assert _rewrite([f"paths.root_dir={tmp_path}", f"hydra.run.dir={empty}"], CONF_DIR)[-1] == f"hydra.run.dir={empty}"
    # A run refused before it wrote anything but logs (hydra/launcher=slurm without -m): the corrected
    # command takes its dir; once it holds more than that (a metrics_log.csv), it is kept.
    refused = _run_dir(tmp_path, "refused", ["hydra/launcher=slurm"])
    (refused / "run.log").write_text("ERROR hydra/launcher=slurm runs jobs of a sweep; add -m\n")
    (refused / "status.json").write_text('{"status": "failed", "task": "train"}')
    assert (
        _rewrite([f"paths.root_dir={tmp_path}", f"hydra.run.dir={refused}"], CONF_DIR)[-1] == f"hydra.run.dir={refused}"
    )
    (refused / "metrics_log.csv").write_text("epoch\n1\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        _rewrite([f"paths.root_dir={tmp_path}", f"hydra.run.dir={refused}"], CONF_DIR)


@pytest.mark.parametrize("task", ["test", "predict"])
def test_resume_of_another_tasks_run_dir_is_refused(tmp_path, task):
    """It used to run that task again in its dir, over its predictions.csv or metrics_test.json."""
    run_dir = _run_dir(tmp_path, "other", [f"task={task}", "ckpt=/some/best.pth"])
    with pytest.raises(ConfigError, match=f"a task={task} run dir; resume continues a stopped training run"):
        _rewrite([f"paths.root_dir={tmp_path}", f"resume={run_dir}"], CONF_DIR)


def test_a_finished_run_is_not_resumed_and_do_test_becomes_a_test_of_its_checkpoint(tmp_path):
    run_dir = _run_dir(tmp_path, "run", ["seed=1"])
    best = tmp_path / "best.pth"
    best.write_bytes(b"weights")
    registry = Registry(tmp_path / "models" / "model_metadata.json", tmp_path / "models" / "best_model.pth")
    entry = {"run_name": "run", "run_dir": str(run_dir), "best_val_auc": 0.9, "ended_at": "2026-01-01T00:00:00+00:00"}
    registry.register_run({**entry, "status": "failed"}, best)
    argv = _rewrite([f"paths.root_dir={tmp_path}", f"resume={run_dir}"], CONF_DIR)
    assert argv[-1] == f"hydra.run.dir='{run_dir}'"  # a failed run is resumed

    registry.register_run({**entry, "status": "finished"}, best)
    with pytest.raises(_RunFinished, match="has already finished .*best val AUC 0.9.*add train.do_test=true"):
        _rewrite([f"paths.root_dir={tmp_path}", f"resume={run_dir}"], CONF_DIR)
    argv = _rewrite([f"paths.root_dir={tmp_path}", f"resume={run_dir}", "train.do_test=true"], CONF_DIR)
    assert argv[-2:] == ["task=test", f"ckpt='{run_dir}'"] and "seed=1" in argv
    assert not any(arg.startswith(("resume=", "hydra.run.dir=")) for arg in argv)


def test_a_sweep_jobs_dir_is_quoted_for_hydra_where_it_must_be():
    """A job dir is named by its overrides (0_backbone.name=x,seed=1): typed as ckpt= or resume=,
    Hydra's grammar stops at the '='; quoted, it reads the whole path."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from deepfake.tasks.resume_argv import quote_paths

    job = "/runs/multirun/2026-12-01_00-21-34_1998/0_backbone.name=test_resnet,seed=1"
    argv = [f"ckpt={job}", f"resume={job}", f"init_from={job}/best.pth", "seed=1,2", "resume=true", "ckpt='/a=b'"]
    quoted = quote_paths(argv)
    assert quoted[3:] == argv[3:]  # other keys, plain values and quoted ones: untouched
    values = [override.value() for override in OverridesParser.create().parse_overrides(quoted[:3])]
    assert values == [job, job, f"{job}/best.pth"]


def test_sweep_job_names_in_lists_of_runs_are_quoted_for_hydra():
    """compare.runs=[<sweep>/<job>,...] as task=registry lists the jobs: Hydra's grammar cannot read the
    '=' and ',' of a job's name in a list element, so every such list was a parse error, exit 1."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from deepfake.tasks.resume_argv import quote_paths

    job, cut = "fx/0_backbone.name=test_resnet,seed=1", "fx/1_optimizer=sgd,dataset.generate.n_tra-5790e46d"
    argv = [f"compare.runs=[{job}, 2026-12-03_15-51-18_cd4d,{cut}]", f"registry.runs={job}",
            f"archive.runs=[multirun/{job},{job}]", "compare.runs=[a,b]", f"registry.runs=['{job}']"]  # fmt: skip
    quoted = quote_paths(argv)
    assert quoted[3:] == argv[3:]  # names Hydra reads as they are, and quoted ones: untouched
    values = [override.value() for override in OverridesParser.create().parse_overrides(quoted)]
    assert values[:3] == [[job, "2026-12-03_15-51-18_cd4d", cut], [job], [f"multirun/{job}", job]]


def test_a_resume_from_another_folder_works_where_the_run_was_started(tmp_path, monkeypatch, capsys):
    """Started in a folder with dataset.root=k140 (relative), resumed from another: the CSV was looked
    for under the new folder, or the run was registered into a second registry there."""
    started_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    started_in.mkdir()
    elsewhere.mkdir()
    run_dir = _run_dir(tmp_path, "2026-01-01_00-00-00_aaaa", ["dataset.root=k140", "paths.root_dir=proj"])
    (run_dir / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {started_in}\n")
    monkeypatch.chdir(elsewhere)
    argv = _rewrite([f"resume={run_dir}"], CONF_DIR)
    assert Path.cwd() == started_in and "dataset.root=k140" in argv
    assert f"resume: working in {started_in}, where {run_dir.name} was started" in capsys.readouterr().out


def test_a_resume_under_another_deepfake_root_keeps_the_runs_own_root(tmp_path, monkeypatch, capsys):
    """DEEPFAKE_ROOT (paths.root_dir's default) is in no override: resumed from a shell where it differed,
    the run regenerated its data and was registered and promoted into that root's registry, silently."""
    started, other = tmp_path / "started", tmp_path / "other"
    other.mkdir()
    run_dir = _run_dir(started, "2026-01-01_00-00-00_aaaa", ["seed=1"])
    (run_dir / "config_resolved.yaml").write_text(f"paths:\n  root_dir: {started}\n")
    monkeypatch.setenv("DEEPFAKE_ROOT", str(other))

    argv = _rewrite([f"resume={run_dir}"], CONF_DIR)

    assert f"paths.root_dir='{started}'" in argv
    assert f"resume: paths.root_dir={started}, the root {run_dir.name} was started with" in capsys.readouterr().out
    # Given on the command line (or among the run's overrides), the root is the one given.
    assert f"paths.root_dir={other}" in _rewrite([f"resume={run_dir}", f"paths.root_dir={other}"], CONF_DIR)
    monkeypatch.setenv("DEEPFAKE_ROOT", str(started))  # the same root: nothing added
    assert not [arg for arg in _rewrite([f"resume={run_dir}"], CONF_DIR) if arg.startswith("paths.root_dir")]
