"""Tasks: the only code that reads the Hydra config and wires library objects together.

``run(cfg)`` is the job function Hydra calls: it dispatches on ``cfg.task.name`` through
:func:`deepfake.tasks.jobs.run_job`, which records what the job ended with and never exits the
process; scripts/main.py turns the outcomes into the exit status (2 for a user's mistake, 1 for a bug).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from importlib import import_module

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from deepfake.errors import ConfigError
from deepfake.tasks import values
from deepfake.tasks.jobs import exit_status, run_job, stop_exit_status  # noqa: F401  (exit statuses: for the entry point)
from deepfake.tasks.resolvers import register_resolvers

log = logging.getLogger(__name__)

# task name -> module under deepfake.tasks defining run(cfg). Imported lazily: `task=registry`
# should not pay for importing torch models.
TASKS = {
    "train": "train", "test": "test", "registry": "registry", "cam": "cam", "audit": "audit", "compare": "compare",
    "predict": "predict", "export": "export", "card": "card", "bench": "bench", "prune": "prune",
    "archive": "archive",
}  # fmt: skip

register_resolvers()


def run(cfg: DictConfig, loaded: Callable[[], None] | None = None):
    """Run the configured task as a job; returns its optimised metric (sweepers read it).
    ``loaded`` is called once the task's modules are imported, before it runs (the entry point
    freezes the start-up heap there: scripts/main.py)."""
    # Library warnings (torch, timm, PIL) then reach run.log too, not only the terminal.
    logging.captureWarnings(True)
    return run_job(cfg, partial(_dispatch, loaded=loaded))


def _dispatch(cfg: DictConfig, loaded: Callable[[], None] | None = None):
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"task={name} is unknown; choose one of: {', '.join(TASKS)}")
    _refuse_a_launcher_without_multirun()
    _refuse_words_for_true_or_false(cfg)
    _refuse_unset_values(cfg)
    _check_seed(cfg.get("seed"))
    task = import_module(f"deepfake.tasks.{TASKS[name]}")
    if loaded is not None:
        loaded()
    return task.run(cfg)


def _check_seed(seed) -> None:
    """A whole number in [0, 2**63): text, 1.5 or a 20-digit seed was a traceback from int(), numpy or
    torch.manual_seed, after the data had been read."""
    if not 0 <= values.number(seed, "seed", int) < 2**63:  # null too: None % 2**32 further on
        raise ConfigError(f"seed={seed} must be a whole number from 0 to 2**63 - 1")


def _refuse_unset_values(cfg: DictConfig) -> None:
    """A ``???`` left unset (``backbone=timm`` without ``backbone.name``): one line now, not OmegaConf's
    MissingMandatoryValue traceback once the data had been generated and scanned."""
    from omegaconf import OmegaConf

    if unset := sorted(OmegaConf.missing_keys(cfg)):
        added = " ".join(f"{key}=<value>" for key in unset)
        raise ConfigError(f"{', '.join(unset)} must be set: no default; add {added} to the command line")


def _refuse_words_for_true_or_false(cfg: DictConfig) -> None:
    """``prune.apply=no`` is the text "no" to Hydra, and text is true: refused before the task runs."""
    if HydraConfig.initialized():
        from deepfake.tasks.flags import check_flags

        hydra = HydraConfig.get()
        # Presets of the user's own (hydra.searchpath) must compose the defaults too.
        searchpath = [o for o in hydra.overrides.hydra if values.override_key(o) == "hydra.searchpath"]
        check_flags(cfg, list(hydra.overrides.task), str(hydra.job.config_name), composing=searchpath)


def _refuse_a_launcher_without_multirun() -> None:
    """Hydra hands jobs to a launcher (SLURM, submitit_local, joblib) only in a multirun: without -m
    ``hydra/launcher=slurm`` would train here, in this one process, and say nothing."""
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    launcher = hydra.runtime.choices.get("hydra/launcher")
    if hydra.mode == RunMode.RUN and launcher not in (None, "basic"):
        raise ConfigError(f"hydra/launcher={launcher} launches the jobs of a multirun only; add -m "
                          f"(python scripts/main.py -m hydra/launcher={launcher} ...), or drop it to run here")  # fmt: skip
