"""Sweeps as users run them: a failed job is a result, launchers in parallel, Optuna, submitit.

Every sweep runs scripts/main.py -m in a subprocess on the tiny task (timm's test_resnet at 32 px),
one thread per process so parallel jobs share the two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import forked_cli
import pytest
from conftest import TINY, run_main
from helpers import assert_consistent_best, error_lines, job_dirs, only_sweep_dir, registry, summary
from reliability.faults import ENV

from deepfake.tracking.run_lock import RunDirLock

pytestmark = pytest.mark.slow

ONE_THREAD = {"OMP_NUM_THREADS": "1"}

# Three experiment presets a user might sweep over: one fine, one naming a model timm does not have,
# one whose fine-tuning diverges (SGD at an absurd backbone rate).
PRESETS = {
    "good": "backbone:\n  name: test_resnet\n",
    "bad_name": "backbone:\n  name: no_such_model\n",
    "diverge": "defaults:\n  - override /optimizer: sgd\nbackbone:\n  name: test_resnet\nphase:\n  lr_backbone: 1.0e30\n",
}


def sweep(root: Path, data_dir: Path, *overrides: str, check: bool = True, tiny: list[str] = TINY):
    return run_main(root, "-m", *tiny, *overrides, data_dir=data_dir, check=check, timeout=600, env=ONE_THREAD)


def test_failed_jobs_are_results_and_the_sweep_goes_on(tmp_path, shared_data_dir):
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    for name, body in PRESETS.items():
        (presets / f"{name}.yaml").write_text("# @package _global_\n" + body)
    result = sweep(
        tmp_path, shared_data_dir, f"hydra.searchpath=[file://{presets.parent}]", "experiment=bad_name,diverge,good",
        check=False, tiny=[o for o in TINY if not o.startswith("backbone.name=")],  # the presets name the model
    )  # fmt: skip
    assert result.returncode == 2, result.stderr

    sweep_dir = only_sweep_dir(tmp_path)
    rows = summary(sweep_dir)
    assert [r["status"] for r in rows] == ["finished", "failed", "failed"]  # failed jobs last
    by_preset = {r["overrides"]: r for r in rows}
    good, bad_name, diverge = (by_preset[f"experiment={name}"] for name in ("good", "bad_name", "diverge"))
    assert rows[0] is good
    assert float(good["best_val_auc"]) > 0 and good["test_auc"] and good["error"] == ""
    assert "no_such_model" in bad_name["error"] and "non-finite training loss" in diverge["error"]
    assert "sweep: 3 job(s), 2 failed" in result.stdout

    entries = {e["run_dir"]: e for e in registry(tmp_path)["runs"]}
    assert registry(tmp_path)["best_run"] == entries[good["run_dir"]]["run_name"]
    for row in (bad_name, diverge):
        entry = entries[row["run_dir"]]
        assert entry["status"] == "failed" and entry["error"] == row["error"]
        log_errors = [line for line in (Path(row["run_dir"]) / "run.log").read_text().splitlines() if "[ERROR]" in line]
        assert len(log_errors) == 1 and row["error"] in log_errors[0]
    assert entries[diverge["run_dir"]]["epochs"] == 1  # training's own record (how far it got) is kept
    assert (Path(good["run_dir"]) / "best.pth").is_file()

    listing = run_main(tmp_path, "task=registry", f"task.sweep={sweep_dir.name}", data_dir=shared_data_dir)
    assert "3 run(s)" in listing.stdout and "no_such_model" in listing.stdout


def test_a_failed_job_resumed_by_hand_keeps_its_one_registry_entry(tmp_path, shared_data_dir):
    """Typed as it is listed (its dir name holds '=' and ','), outside any sweep, the job still
    registers as <sweep>/<job>: the sweep lists it once, now finished."""
    result = sweep(tmp_path, shared_data_dir, "backbone.name=test_resnet,no_such_model", check=False)
    assert result.returncode == 2, result.stderr
    sweep_dir = only_sweep_dir(tmp_path)
    failed = next(p for p in job_dirs(sweep_dir) if "no_such_model" in p.name)

    run_main(tmp_path, *TINY, f"resume={failed}", "backbone.name=test_resnet", data_dir=shared_data_dir)

    entries = registry(tmp_path)["runs"]
    assert sorted(e["run_name"] for e in entries) == sorted(f"{sweep_dir.name}/{p.name}" for p in job_dirs(sweep_dir))
    resumed = next(e for e in entries if e["run_dir"] == str(failed))
    assert resumed["status"] == "finished"


def test_sweep_jobs_refused_before_their_first_write_are_failed_results_of_their_launch(tmp_path, shared_data_dir):
    """A job refused before it writes status.json (a mistyped run_lock setting; a dir another live
    process writes, as a second launch into one hydra.sweep.dir meets it) was listed as killed (exit 1),
    or left out of the summary."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    mistyped = sweep(tmp_path / "a", shared_data_dir, "run_lock.wait_s=-5", "seed=1,2", check=False)
    assert mistyped.returncode == 2, mistyped.stdout + mistyped.stderr
    rows = summary(only_sweep_dir(tmp_path / "a"))
    assert [(r["status"], r["error"]) for r in rows] == [("failed", "run_lock.wait_s=-5 must be 0 or more")] * 2
    entries = registry(tmp_path / "a")["runs"]
    assert sorted(e["run_dir"] for e in entries) == sorted(r["run_dir"] for r in rows)
    assert all(e["status"] == "failed" and e["error"] == rows[0]["error"] for e in entries)
    assert "sweep: 2 job(s), 2 failed" in mistyped.stdout

    # Job 0's dir is another live process's (this one's): its outcome stays, job 1 runs.
    fixed = tmp_path / "b" / "multirun" / "fixed"
    held = fixed / "0"
    held.mkdir(parents=True)
    holders = json.dumps({"status": "running", "task": "train", "job_num": 0, "pid": os.getpid()})
    (held / "status.json").write_text(holders)
    with RunDirLock(held):
        refused = sweep(tmp_path / "b", shared_data_dir, f"hydra.sweep.dir={fixed}", "hydra.sweep.subdir=${hydra.job.num}",
                        "seed=1,2", check=False)  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    rows = summary(fixed)
    assert [(r["job"], r["status"]) for r in rows] == [("1", "finished"), ("0", "refused")]
    assert f"is being written by PID {os.getpid()}" in rows[1]["error"] and rows[1]["run_dir"] == str(held)
    assert "sweep: 2 job(s), 1 failed" in refused.stdout
    assert (held / "status.json").read_text() == holders
    assert [e["run_dir"] for e in registry(tmp_path / "b")["runs"]] == [str(fixed / "1")]
    assert not list(fixed.rglob(".refused-*"))  # read into summary.csv, then removed


def test_joblib_runs_two_jobs_in_parallel(tmp_path, shared_data_dir):
    sweep(tmp_path, shared_data_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2")
    sweep_dir = only_sweep_dir(tmp_path)
    statuses = [json.loads((job / "status.json").read_text()) for job in job_dirs(sweep_dir)]
    assert len({s["pid"] for s in statuses}) == 2  # two worker processes, not one after the other
    assert [r["status"] for r in summary(sweep_dir)] == ["finished", "finished"]
    assert_consistent_best(tmp_path, 2)


def test_submitit_local_runs_the_cluster_code_path_with_two_ranks_per_job(tmp_path, shared_data_dir):
    # Two tasks per job, as hydra.launcher.tasks_per_node=2 asks SLURM for: each job is one DDP run
    # of two ranks (gloo), set up from submitit's environment.
    sweep(tmp_path, shared_data_dir, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "seed=1,2")
    sweep_dir = only_sweep_dir(tmp_path)
    statuses = [json.loads((job / "status.json").read_text()) for job in job_dirs(sweep_dir)]
    assert all(s["launcher_job_id"] and s["attempt"] == 1 and s["status"] == "finished" for s in statuses)
    assert (sweep_dir / ".submitit").is_dir()
    for job in job_dirs(sweep_dir):
        assert "rank 1 of 2" in (job / "run.rank1.log").read_text()
        assert "rank 0 of 2" in (job / "run.log").read_text()
    assert sorted(r["overrides"] for r in summary(sweep_dir)) == ["seed=1", "seed=2"]
    entries = json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"]
    assert [e["world_size"] for e in entries] == [2, 2]
    assert_consistent_best(tmp_path, 2)


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a SLURM machine: the launcher would submit")
@pytest.mark.parametrize("search", [[], ["hparams_search=optuna"]])
def test_a_slurm_sweep_off_a_cluster_is_one_line_before_any_job(tmp_path, shared_data_dir, search):
    """submitit looks for srun only as the sweep launches, and said so in a traceback."""
    refused = sweep(tmp_path, shared_data_dir, "hydra/launcher=slurm", *(search or ["seed=1,2"]), check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert error_lines(refused) == [
        "ERROR hydra/launcher=slurm submits each job to SLURM, and this machine has no srun on PATH: launch the "
        "sweep from a SLURM login node, or run its jobs here with hydra/launcher=submitit_local"]  # fmt: skip
    assert not (tmp_path / "multirun").exists() or not any((tmp_path / "multirun").iterdir())


def test_optuna_search_continues_its_study(tmp_path, shared_data_dir):
    """The same command continues the study; two launches of it at once sampled the same trials (each
    seeded its sampler by the trials found at its start)."""
    search = ("hparams_search=optuna",)
    first = sweep(tmp_path, shared_data_dir, *search, "hydra.sweeper.n_trials=2")
    assert "Study name: deepfake_synthetic" in first.stdout + first.stderr
    database = tmp_path / "multirun" / "optuna" / "deepfake_synthetic.db"
    # Two launches at once: both find the study's 2 trials before either asks for one. Holding sqlite's
    # write lock makes them meet there (the timeout lets each wait for it).
    args = ["-m", f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}", *TINY, *search,
            "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage='sqlite:///{database}?timeout=300'"]  # fmt: skip
    writes = sqlite3.connect(database, isolation_level=None)
    writes.execute("BEGIN IMMEDIATE")
    together = [forked_cli.start(args, tmp_path, {**ENV, **ONE_THREAD}) for _ in range(2)]
    deadline = time.monotonic() + 300
    while not all("continuing study deepfake_synthetic (2 trials so far)" in p.output_so_far() for p in together):
        assert all(p.poll() is None for p in together) and time.monotonic() < deadline, [
            p.output_so_far() for p in together
        ]
        time.sleep(0.05)
    writes.execute("ROLLBACK")
    writes.close()
    outputs = [proc.communicate(timeout=600) for proc in together]
    assert [proc.returncode for proc in together] == [0, 0], outputs

    with sqlite3.connect(database) as db:
        studies = db.execute("SELECT study_name FROM studies").fetchall()
        trials = db.execute("SELECT state FROM trials ORDER BY number").fetchall()
        sampled = {name for (name,) in db.execute("SELECT DISTINCT param_name FROM trial_params")}
        lrs = db.execute("SELECT param_value FROM trial_params WHERE param_name = 'phase.lr_head'").fetchall()
    assert studies == [("deepfake_synthetic",)]
    assert [state for (state,) in trials] == ["COMPLETE"] * 4
    # Values fixed on the command line (TINY's epochs and backbone) leave the search space.
    assert sampled == {"phase.lr_head", "phase.lr_backbone", "optimizer.weight_decay"}
    assert len(set(lrs)) == 4, lrs  # no launch proposed another's points, earlier or at the same time
    # Each launch's sampler is seeded with the preset's seed plus the number of its first trial.
    seeded = sorted(line.split("hydra.sweeper.sampler.seed=")[1] for out, err in outputs
                    for line in (out + err).splitlines() if "sampler TPESampler seeded" in line)  # fmt: skip
    assert seeded == ["42 + 2, this launch's first trial", "42 + 3, this launch's first trial"], outputs
    sweeps = [p for p in (tmp_path / "multirun").iterdir() if p.name != "optuna"]
    assert sorted(len(summary(p)) for p in sweeps) == [1, 1, 2]


def test_an_optuna_search_of_failing_trials_ends_with_its_summary(tmp_path, shared_data_dir):
    """More than max_failure_rate of the launch's trials failing ends the search (the plugin only
    counted jobs Hydra saw fail, and ours return), not its first failed trial; a search where no trial
    finished has no best one: one line, not optuna's traceback. Either way the sweep's summary and exit
    status 2."""
    tiny = [o for o in TINY if not o.startswith("backbone.name=")]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    ended = sweep(tmp_path / "a", shared_data_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                  "backbone.name=no_such_model", check=False, tiny=tiny)  # fmt: skip
    assert ended.returncode == 2 and "Traceback" not in ended.stderr, ended.stderr
    said = "the search ended: 2 of this launch's 3 trials failed, more than hydra.sweeper.max_failure_rate=0.5"
    assert said in ended.stdout + ended.stderr
    assert "with max_failure_rate=" not in ended.stdout + ended.stderr  # the plugin's line of exception reprs
    assert [row["status"] for row in summary(only_sweep_dir(tmp_path / "a"))] == ["failed"] * 2  # 2 of 3 trials
    with sqlite3.connect(tmp_path / "a" / "multirun" / "optuna" / "deepfake_synthetic.db") as db:
        assert [state for (state,) in db.execute("SELECT state FROM trials")] == ["FAIL"] * 2

    none = sweep(tmp_path / "b", shared_data_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.max_failure_rate=1.0", "backbone.name=no_such_model", check=False, tiny=tiny)  # fmt: skip
    assert none.returncode == 2 and "Traceback" not in none.stderr, none.stderr
    assert "no trial of the search finished" in none.stdout + none.stderr
    assert [row["status"] for row in summary(only_sweep_dir(tmp_path / "b"))] == ["failed", "failed"]


@pytest.mark.parametrize(("setting", "said"), [
    ("hydra.sweeper.n_trials=0", "must be a positive integer"), ("hydra.sweeper.n_jobs=-1", "must be a positive integer"),
    ("hydra.sweeper.max_failure_rate=1.5", "must be a share between 0 and 1"),  # an empty AssertionError before
    ("hydra.sweeper.direction=maximise", "must be maximize or minimize"),  # optuna's traceback before
])  # fmt: skip
def test_an_optuna_search_set_up_wrong_is_refused_in_one_line(tmp_path, shared_data_dir, setting, said):
    refused = sweep(tmp_path, shared_data_dir, "hparams_search=optuna", setting, check=False)
    errors = error_lines(refused)
    assert refused.returncode == 2 and errors == [f"ERROR {setting} {said}"], refused.stderr
    assert "Traceback" not in refused.stderr  # the plugin's missing results file, before


def test_an_optuna_trial_that_cannot_be_composed_is_a_failed_trial_and_a_new_space_needs_a_new_study(
    tmp_path, shared_data_dir
):
    """A choice naming a group option that does not exist ended the search with a traceback and left
    the batch's trials running in the study; a space the study never searched was optuna's traceback."""
    search = ["hparams_search=optuna", "hydra.sweeper.max_failure_rate=1.0", "hydra.sweeper.n_trials=3"]
    tiny = [o for o in TINY if o != "backbone=timm"]  # a value fixed on the command line leaves the space
    ended = sweep(tmp_path, shared_data_dir, *search, "backbone=choice(timm,nosuch)", check=False, tiny=tiny)
    assert ended.returncode == 2 and "Traceback" not in ended.stderr, ended.stderr
    with sqlite3.connect(tmp_path / "multirun" / "optuna" / "deepfake_synthetic.db") as db:
        trials = db.execute("SELECT trial_id, state FROM trials").fetchall()
        chosen = dict(db.execute("SELECT trial_id, param_value FROM trial_params WHERE param_name = 'backbone'"))
    assert len(trials) == 3 and "RUNNING" not in {state for _, state in trials}
    assert {state for _, state in trials} <= {"COMPLETE", "FAIL"} and "FAIL" in {state for _, state in trials}
    assert all((state == "FAIL") == (chosen[trial] == 1.0) for trial, state in trials)  # choice index 1: nosuch
    assert "cannot be composed: In 'config': Could not find 'backbone/nosuch'" in ended.stdout + ended.stderr
    # Each trial is a row of the summary: one never composed has no dir, and was missing from it.
    sweep_dir = only_sweep_dir(tmp_path)
    rows = summary(sweep_dir)
    failed = sum(state == "FAIL" for _, state in trials)
    assert len(rows) == 3 and len({row["job"] for row in rows}) == 3, rows
    assert (
        sum(row["status"] == "failed" and "Could not find 'backbone/nosuch'" in row["error"] for row in rows) == failed
    )
    assert len(job_dirs(sweep_dir)) == 3 - failed and f"sweep: 3 job(s), {failed} failed" in ended.stdout

    # The study continued over another space (an interval now a choice, a choice of other options) or
    # towards another direction: optuna's traceback (exit 1), and the trial asked for it left RUNNING.
    for changed, said in [
        ("phase.lr_head=choice(0.001,0.01)", "searched phase.lr_head over LogUniformDistribution"),
        ("backbone=choice(timm,resnet18)", "searched backbone over CategoricalDistribution(choices=('timm', 'nosuch'))"),
        ("hydra.sweeper.direction=minimize", "hydra.sweeper.direction=minimize: the study deepfake_synthetic"),
    ]:  # fmt: skip
        other = sweep(tmp_path, shared_data_dir, *search, changed, check=False, tiny=tiny)
        assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr
        [line] = error_lines(other)
        assert said in line and "hydra.sweeper.study_name=<a new name>" in line, line
    with sqlite3.connect(tmp_path / "multirun" / "optuna" / "deepfake_synthetic.db") as db:
        states = [state for (state,) in db.execute("SELECT state FROM trials")]
    assert "RUNNING" not in states and len(states) == 3 + 2, states  # each refused space's trial failed


def test_an_optuna_launch_stopped_by_a_signal_fails_its_running_trial(tmp_path, shared_data_dir):
    """A stopped launch left its trial RUNNING in the study forever; optuna's own optimize fails it."""
    slow = ["phase.finetune_epochs=8", "dataset.batch_size=4"]  # a trial long enough to be caught training
    proc = forked_cli.start(["-m", f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}", *TINY, *slow,
                             "hparams_search=optuna", "hydra.sweeper.n_trials=3"], tmp_path, ENV)  # fmt: skip
    deadline = time.monotonic() + 300
    # In the training loop (its first epoch's row), where a signal ends the job at a batch's end.
    while not [log for log in tmp_path.glob("multirun/*/0_*/metrics_log.csv") if len(log.read_text().splitlines()) > 1]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    with sqlite3.connect(tmp_path / "multirun" / "optuna" / "deepfake_synthetic.db") as db:
        trials = db.execute("SELECT number, state FROM trials").fetchall()
        reasons = db.execute("SELECT value_json FROM trial_user_attributes WHERE key = 'fail_reason'").fetchall()
    assert trials == [(0, "FAIL")]
    assert reasons == [(json.dumps("the launch was stopped (SIGINT)"),)]
    [job] = job_dirs(only_sweep_dir(tmp_path))
    assert json.loads((job / "status.json").read_text())["status"] == "stopped" and (job / "last.pth").is_file()
    assert "trial 0: the launch was stopped (SIGINT); recorded as failed in the study" in out + err
    # The hint said to relaunch the sweep into its dir, which samples new trials and never resumes this
    # one: resume= does, as a run of its own.
    assert f"resume with: python scripts/main.py resume={job} (a run of its own then" in out + err
    assert "relaunch the sweep" not in out + err
    run_main(tmp_path, f"resume={job}", data_dir=shared_data_dir, env=ONE_THREAD)
    assert json.loads((job / "status.json").read_text())["status"] == "finished"
    [entry] = registry(tmp_path)["runs"]
    assert entry["status"] == "finished" and entry["run_dir"] == str(job)


def test_a_sweep_relaunched_into_its_own_dir_keeps_finished_jobs_and_resumes_stopped_ones(tmp_path, shared_data_dir):
    """It used to train every job again over its checkpoints and registry entry."""
    fixed = [f"hydra.sweep.dir={tmp_path / 'multirun' / 'fixed'}", "seed=1,2"]
    sweep(tmp_path, shared_data_dir, *fixed)
    first, second = job_dirs(tmp_path / "multirun" / "fixed")
    kept = {job: (job / "best.pth").read_bytes() for job in (first, second)}
    entries = registry(tmp_path)["runs"]
    # The second job as a killed process leaves it: status still running, last.pth on disk.
    status = json.loads((second / "status.json").read_text())
    (second / "status.json").write_text(json.dumps({**status, "status": "running", "ended_at": None}))

    again = sweep(tmp_path, shared_data_dir, *fixed)
    assert (first / "best.pth").read_bytes() == kept[first]  # not trained again
    assert "finished in an earlier launch of this sweep" in (first / "run.log").read_text()
    assert "left running by an earlier launch of this sweep: resuming it" in (second / "run.log").read_text()
    assert (second / "best.pth").read_bytes() == kept[second]  # its last.pth was at the schedule's end
    assert len(registry(tmp_path)["runs"]) == len(entries) == 2
    assert [row["status"] for row in summary(tmp_path / "multirun" / "fixed")] == ["finished", "finished"]
    assert "sweep: 2 job(s)" in again.stdout

    # Relaunched with another override its job dirs' names leave out (the models dir): the dirs hold
    # the earlier jobs' runs, which were reported as this launch's results and their overrides replaced.
    kept = {job: [(job / name).read_bytes() for name in ("best.pth", "status.json", ".hydra/overrides.yaml")]
            for job in (first, second)}  # fmt: skip
    other = sweep(tmp_path, shared_data_dir, *fixed, f"paths.models_dir={tmp_path / 'other'}", check=False)
    assert other.returncode == 2, other.stdout + other.stderr
    assert (other.stdout + other.stderr).count("holds a job of an earlier launch with other overrides") >= 2
    assert all([(job / name).read_bytes() for name in ("best.pth", "status.json", ".hydra/overrides.yaml")] == files
               for job, files in kept.items())  # fmt: skip
    assert not (tmp_path / "other" / "model_metadata.json").exists()


def test_a_sweep_job_finished_by_hand_is_kept_by_the_sweeps_relaunch(tmp_path, shared_data_dir):
    """A job stopped by Ctrl-C, then finished with resume=<job dir> (a run of its own): the relaunch its
    stop line asks for refused it as a job of other overrides, the resume= it had recorded, exit 2."""
    fixed = tmp_path / "multirun" / "fixed"
    launch = ["phase.finetune_epochs=4", "dataset.batch_size=4", f"hydra.sweep.dir={fixed}", "seed=1,2"]
    proc = forked_cli.start(["-m", f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}", *TINY, *launch],
                            tmp_path, {**ENV, **ONE_THREAD})  # fmt: skip
    deadline = time.monotonic() + 300
    while not [log for log in fixed.glob("0_*/metrics_log.csv") if len(log.read_text().splitlines()) > 1]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "relaunch the sweep with hydra.sweep.dir=" in out + err, err
    [job] = job_dirs(fixed)
    run_main(tmp_path, f"resume={job}", data_dir=shared_data_dir, env=ONE_THREAD)
    kept = (job / "best.pth").read_bytes()

    sweep(tmp_path, shared_data_dir, *launch)
    assert (job / "best.pth").read_bytes() == kept  # not trained again
    rows = {row["job"]: row for row in summary(fixed)}
    assert [(rows[n]["overrides"], rows[n]["status"]) for n in ("0", "1")] == [
        ("seed=1", "finished"),
        ("seed=2", "finished"),
    ]
    [entry] = [entry for entry in registry(tmp_path)["runs"] if entry["run_dir"] == str(job)]
    assert float(rows["0"]["best_val_auc"]) == entry["best_val_auc"] and entry["status"] == "finished"
