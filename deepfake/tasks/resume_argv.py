"""resume=true | resume=<run dir>, before Hydra starts: the command line that continues a stopped
training run in its own run dir.

Hydra fixes the run dir before any task code runs, so ``scripts/main.py`` rewrites the command
line first (:func:`rewrite_argv`): the run's own overrides (its ``.hydra/overrides.yaml``), then
those typed now (a later value for the same key wins), then ``resume=<run dir>`` and
``hydra.run.dir=<run dir>``. ``resume=true`` picks the most recently started run dir under
``<paths.log_dir>/train`` that can go on. The config is still composed from ``conf/``; what is read
back from the run dir is not trusted: its overrides may not touch Hydra's own settings. What the
resumed task itself checks is in :mod:`deepfake.tasks.resume`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import datetime
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from deepfake.errors import ConfigError, UserError
from deepfake.tasks import values
from deepfake.tasks.jobs import EXIT_USER_ERROR, STATUS_FILE, read_status

log = logging.getLogger(__name__)

MULTIRUN_FLAGS = ("-m", "--multirun")
SEARCH_GROUP = "hparams_search"  # a config group that makes Hydra sweep (conf/hparams_search/)
PREVIOUS_OVERRIDES_ENV = "DEEPFAKE_RESUMED_OVERRIDES"  # the resumed run's overrides.yaml as it was
PREVIOUS_STATUS_ENV = "DEEPFAKE_RESUMED_STATUS"  # how it ended, as its status.json said before this launch


class _RunFinished(Exception):
    """resume= of a run that has already finished: said in one line, exit status 0."""


def rewrite_argv(argv: list[str], conf_dir: str | Path) -> list[str]:
    """The command line Hydra should see; a bad ``resume`` ends here with one ERROR line, status 2,
    and so does any launch into a run dir that a live process is writing (before Hydra writes to it)."""
    try:
        return _rewrite(quote_paths(argv), Path(conf_dir))
    except _RunFinished as finished:
        print(finished)
        sys.exit(0)
    except UserError as err:
        print(f"ERROR {err}", file=sys.stderr)
        sys.exit(2)


# Overrides whose values are paths: a sweep job's dir is named by its overrides ("0_seed=1,...").
PATH_KEYS = ("resume", "ckpt", "init_from")
# Overrides whose values are lists of run names: a sweep job's is <sweep>/<its dir>.
RUN_LIST_KEYS = ("compare.runs", "registry.runs", "archive.runs")
# In a list of run names: a sweep job's name, and a piece of it past a comma: a setting of its dir's
# name, or the end of a long one cut with a hash (deepfake.tasks.resolvers.dir_suffix).
_JOB_NAME = re.compile(r"/\d+_")
_JOB_NAME_PART = re.compile(r"[^/,=]+=|[^/,=]*-[0-9a-f]{8}$")


def quote_paths(argv: list[str]) -> list[str]:
    """``resume=``, ``ckpt=`` and ``init_from=`` with a path Hydra's grammar cannot read unquoted (a
    sweep job's dir holds ``=`` and ``,``; a path may hold spaces), and the run names of
    ``compare.runs=[...]``, ``registry.runs=[...]`` and ``archive.runs=[...]`` (a sweep job's), get the
    quotes the user would otherwise have to type; every other argument, a value that parses as it is,
    and one with quotes of its own (Hydra says what is wrong with it) are left alone."""
    parser = OverridesParser.create()
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        name = key.lstrip("+~")
        path = name in PATH_KEYS and value[:1] not in ("", "'", '"')
        if sep and (path or name in RUN_LIST_KEYS and value and not set("'\"") & set(value)):
            try:
                parser.parse_overrides([arg])
            except HydraException:
                arg = f"{key}={_quoted(value) if path else _quoted_names(value)}"
        quoted.append(arg)
    return quoted


def _quoted_names(value: str) -> str:
    """``[a,b]`` (or one name, unbracketed) as a list of quoted names. A comma inside a sweep job's
    name (``<sweep>/<num>_k=v,k=v``) is told from one between names by what follows it: a ``key=``
    without a ``/`` (or a cut name's hash) goes on with the job's name; a plain run named ``k=v``
    after one has to be quoted by hand."""
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    names: list[str] = []
    for piece in (piece.strip() for piece in inner.split(",")):
        if names and _JOB_NAME.search(names[-1]) and _JOB_NAME_PART.match(piece):
            names[-1] += f",{piece}"
        else:
            names.append(piece)
    return "[" + ",".join(_quoted(name) for name in names) + "]"


def _rewrite(argv: list[str], conf_dir: Path) -> list[str]:
    if not any(arg.startswith(("resume=", "hydra.run.dir=")) for arg in argv):
        return argv
    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    flags = [arg for arg in argv if arg not in overrides]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return argv  # Hydra reports the malformed override itself
    value = _typed(parsed, "resume")
    if value in (None, False):
        _refuse_live_run_dir(_typed(parsed, "hydra.run.dir"), parsed, conf_dir)
        _refuse_used_run_dir(_typed(parsed, "hydra.run.dir"))
        return argv
    if any(flag in MULTIRUN_FLAGS for flag in flags) or _typed(parsed, SEARCH_GROUP) is not None:
        raise ConfigError(
            "resume continues one run, not a sweep; resume each job by its dir: resume=<multirun/...>/<job>"
        )
    if _typed(parsed, "hydra.run.dir") is not None:
        raise ConfigError("resume picks the run dir itself; drop hydra.run.dir from the command line")
    if (task := _typed(parsed, "task")) not in (None, "train"):
        raise ConfigError(f"resume continues a stopped training run, not task={task}; drop resume= to run task={task} "
                          "(ckpt=<run dir> gives it the run's model)")  # fmt: skip
    run_dir = _latest_run_dir(conf_dir, overrides) if value is True else _existing_run_dir(str(value))
    _work_where_it_started(run_dir)
    kept = _last_wins([o for o in _previous_overrides(run_dir) + parsed if o.key_or_group != "resume"])
    kept = _with_its_own_root(run_dir, kept)
    cfg = _compose(conf_dir, kept, f"resume={run_dir}")
    if cfg.task.name != "train":
        raise ConfigError(f"resume={run_dir}: a task={cfg.task.name} run dir; resume continues a stopped training "
                          "run (outputs/train/<run>): run the task again instead, into a new dir")  # fmt: skip
    _refuse_live_run_dir(run_dir, kept, conf_dir, cfg)
    finished = finished_entry(cfg, run_dir)
    if finished is None:
        # Hydra rewrites the run's overrides.yaml with these before the task can refuse them: kept to put back.
        os.environ[PREVIOUS_OVERRIDES_ENV] = (run_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")
        # The task rewrites status.json ("running") before it reads last.pth: how the run ended is kept here.
        ended = read_status(run_dir) or {}
        os.environ[PREVIOUS_STATUS_ENV] = json.dumps(
            {"run_dir": str(run_dir), "status": ended.get("status"), "error": ended.get("error")}
        )
        return [*flags, *_lines(kept), f"resume={_quoted(run_dir)}", f"hydra.run.dir={_quoted(run_dir)}"]
    if _typed(parsed, "train.do_test") is not True:
        raise _RunFinished(finished_message(run_dir, finished) + "; to re-run only its test: add train.do_test=true")
    # Only the test, as task=test of the run's best.pth: its own run dir, the run's registry entry updated.
    print(f"{run_dir} has already finished: re-running only its test (task=test ckpt={run_dir})", flush=True)
    retest = OverridesParser.create().parse_overrides(["task=test", f"ckpt={_quoted(run_dir)}"])
    return [*flags, *_lines(_last_wins(kept + retest))]


def _typed(overrides: list[Override], key: str):
    """The value the command line gives ``key`` (the last one wins), or None."""
    return next((o.value() for o in reversed(overrides) if o.key_or_group == key), None)


def _compose(conf_dir: Path, overrides: list[Override], purpose: str) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return compose(
                config_name="config", overrides=[o.input_line for o in overrides if not o.is_hydra_override()]
            )
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # ValueError: experiment=null, say
        raise ConfigError(f"{purpose}: cannot compose the config ({' '.join(str(err).split())})") from None


def _refuse_live_run_dir(run_dir, overrides: list[Override], conf_dir: Path, cfg: DictConfig | None = None) -> None:
    """A run dir that a live process is writing is nobody else's to open: Hydra would rewrite its .hydra/."""
    from deepfake.tracking.run_lock import LOCK_NAME, refuse_if_held  # on every launch: only when a lock is there

    if run_dir is None or not (Path(str(run_dir)) / LOCK_NAME).is_file():
        return
    cfg = cfg if cfg is not None else _compose(conf_dir, overrides, f"hydra.run.dir={run_dir}")
    refuse_if_held(Path(str(run_dir)), values.lock_stale_after_s(cfg))


def _refuse_used_run_dir(run_dir) -> None:
    """A new run into a dir that holds a run would replace its config, checkpoints and registry entry."""
    overrides = Path(str(run_dir)) / ".hydra" / "overrides.yaml" if run_dir is not None else None
    if overrides is None or not overrides.is_file() or _failed_before_any_output(overrides.parents[1]):
        return
    task = next((line.split("=", 1)[1].strip() for line in overrides.read_text(encoding="utf-8").splitlines()
                 if line.lstrip("- ").startswith("task=")), "train")  # fmt: skip
    resume = f"continue a stopped training with resume={run_dir}, or " if task == "train" else ""
    raise ConfigError(f"hydra.run.dir={run_dir} already holds a run (task={task}); {resume}give a new dir (a new "
                      "run there would replace its config, outputs and registry entry)")  # fmt: skip


def _failed_before_any_output(run_dir: Path) -> bool:
    """A run that failed before it wrote anything but its logs (a refused setting): the corrected
    command may take its dir, as a user who reads the error and fixes the line expects."""
    failed = (read_status(run_dir) or {}).get("status") == "failed"
    kept = {".hydra", "run.log", STATUS_FILE, "git.txt", "requirements.txt", "config_resolved.yaml"}
    return failed and all(path.name in kept for path in run_dir.iterdir())


def _refusal_before_any_checkpoint(run_dir: Path) -> str | None:
    """The error of a run refused for a user's mistake (dataset.batch_size=0, a missing CSV) before it
    saved a checkpoint, else None: resuming it runs the same command again, to the same error."""
    status = read_status(run_dir) or {}
    saved = any((run_dir / name).is_file() for name in ("last.pth", "best.pth"))
    refused = status.get("status") == "failed" and status.get("exit_code") == EXIT_USER_ERROR and not saved
    return str(status.get("error")) if refused else None


def _latest_run_dir(conf_dir: Path, overrides: list[str]) -> Path:
    """The most recently started run that can go on. Passed over, each named by why: a run that has
    finished (registered so), one a live process is writing, one refused before any checkpoint."""
    from deepfake.tracking.run_lock import RunDirLocked, refuse_if_held

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("resume=")])
    cfg = _compose(conf_dir, parsed, "resume=true")
    train_dir = Path(cfg.paths.log_dir) / "train"
    runs = sorted(
        (d for d in train_dir.glob("*") if (d / ".hydra" / "overrides.yaml").is_file()),
        key=lambda run_dir: (_started(run_dir), run_dir.name),
    )

    def why_not(run_dir: Path) -> str | None:
        # Its own status too: a run registered elsewhere (its own paths.models_dir) is not in this registry.
        if (read_status(run_dir) or {}).get("status") == "finished" or finished_entry(cfg, run_dir) is not None:
            return "it has finished"
        try:
            refuse_if_held(run_dir, values.lock_stale_after_s(cfg))
        except RunDirLocked:
            return "a live process is writing it"
        if (error := _refusal_before_any_checkpoint(run_dir)) is not None:
            return f"it failed on a user's mistake before saving a checkpoint ({error})"
        return None

    passed_over = []
    for run_dir in reversed(runs):
        reason = why_not(run_dir)
        if reason is None:
            break
        passed_over.append((run_dir, reason))
    else:
        newest = f" (the newest, {passed_over[0][0].name}: {passed_over[0][1]})" if passed_over else ""
        raise ConfigError(f"resume=true: no run to resume under {train_dir}{newest}; start one without resume")
    if passed_over:
        named = "; ".join(f"{d.name}: {reason}" for d, reason in passed_over[:3])
        more = f"; and {len(passed_over) - 3} more" if len(passed_over) > 3 else ""
        print(f"resume=true: {run_dir.resolve()}, the newest run that can go on; passed over {len(passed_over)} newer "
              f"run(s): {named}{more}", flush=True)  # fmt: skip
    return run_dir.resolve()


def _started(run_dir: Path) -> float:
    """When the run's latest session started (its status.json), else when its overrides were written.
    Not its name: only Hydra's stamped names sort by time, and hydra.run.dir=expA sorted after them."""
    try:
        return datetime.fromisoformat((read_status(run_dir) or {})["started_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return (run_dir / ".hydra" / "overrides.yaml").stat().st_mtime


def _work_where_it_started(run_dir: Path) -> None:
    """A run's overrides keep its paths as typed, and relative ones start at the folder it was launched
    from (Hydra's runtime.cwd). Resumed from another folder they named other files: a CSV not found, or
    a second registry that the resumed run was registered and promoted into. The resume works in the
    run's own folder instead, and says so."""
    try:
        hydra_yaml = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text(encoding="utf-8"))
        started_in = Path(hydra_yaml["hydra"]["runtime"]["cwd"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return  # no record of it (a hand-made dir): the current folder, as before
    if started_in.is_dir() and started_in.resolve() != Path.cwd().resolve():
        print(f"resume: working in {started_in}, where {run_dir.name} was started (relative paths in its "
              "overrides start there)", flush=True)  # fmt: skip
        os.chdir(started_in)


def _with_its_own_root(run_dir: Path, overrides: list[Override]) -> list[Override]:
    """paths.root_dir defaults to $DEEPFAKE_ROOT, which no override records: resumed from a shell where
    it differed (or was unset: the repository's root), the run read other data and was registered and
    promoted into another registry, without a word. The root the run used (config_resolved.yaml) is
    kept, and said, unless an override (the run's or this command line's) gives one."""
    if any(o.key_or_group == "paths.root_dir" for o in overrides):
        return overrides
    try:
        recorded = yaml.safe_load((run_dir / "config_resolved.yaml").read_text(encoding="utf-8"))["paths"]["root_dir"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return overrides  # no record (a run refused before writing it): the current root, as before
    here = os.environ.get("DEEPFAKE_ROOT", ".")
    if not isinstance(recorded, str) or not Path(recorded).is_dir() or Path(recorded).resolve() == Path(here).resolve():
        return overrides
    print(f"resume: paths.root_dir={recorded}, the root {run_dir.name} was started with (DEEPFAKE_ROOT here: "
          f"{here}); give paths.root_dir to change it", flush=True)  # fmt: skip
    return overrides + OverridesParser.create().parse_overrides([f"paths.root_dir={_quoted(Path(recorded))}"])


def _existing_run_dir(value: str) -> Path:
    run_dir = Path(value).expanduser().resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"resume={value}: no such run dir; pass outputs/train/<run> or resume=true for the latest")
    if not (run_dir / ".hydra" / "overrides.yaml").is_file():
        raise ConfigError(f"resume={value}: not a run dir of scripts/main.py (no .hydra/overrides.yaml)")
    return run_dir


def _previous_overrides(run_dir: Path) -> list[Override]:
    path = run_dir / ".hydra" / "overrides.yaml"
    lines = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ConfigError(f"{path}: expected a list of overrides; the file was edited or damaged")
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as err:
        raise ConfigError(f"{path}: {err}") from None
    for override in parsed:
        if override.is_hydra_override():
            raise ConfigError(
                f"{path}: {override.input_line!r} changes Hydra's own settings, which a run's overrides never do; "
                "the file was edited, refusing to resume from it"
            )
    # An Optuna trial's dir names the search (hparams_search=optuna), which makes Hydra start a new
    # sweep: the run's own settings are its sampled values, kept; the search is the sweep's.
    return [override for override in parsed if override.key_or_group != SEARCH_GROUP]


def _last_wins(overrides: list[Override]) -> list[Override]:
    by_key: dict[tuple, Override] = {}
    for override in overrides:
        by_key[(override.key_or_group, override.package)] = override
    return list(by_key.values())


def _lines(overrides: list[Override]) -> list[str]:
    return [override.input_line for override in overrides]


def _quoted(text: str | Path) -> str:
    return "'" + str(text).replace("'", "\\'") + "'"


def finished_entry(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The registry entry of ``run_dir`` when that run has finished (trained, tested, registered), else None."""
    from deepfake.tracking.registry import (
        Registry,  # not session.open_registry: scripts/main.py asks before Hydra starts
    )

    entry = Registry(cfg.paths.registry, cfg.paths.best_model).entry_for_run_dir(run_dir)
    return entry if entry is not None and entry.get("status") == "finished" else None


def finished_message(run_dir: Path, entry: dict) -> str:
    return (
        f"{run_dir} has already finished (ended {entry.get('ended_at')}, best val AUC {entry.get('best_val_auc')}): "
        "nothing to train, test or register again"
    )
