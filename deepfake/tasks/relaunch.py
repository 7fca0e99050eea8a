"""A sweep relaunched into its own fixed ``hydra.sweep.dir``: what each job finds in its dir.

An earlier launch's job of the same number may have finished (not trained again), stopped or been
killed part-way (resumed from its last.pth), or be another job altogether (other overrides under a
shared dir name: refused, its files left as they were). :mod:`deepfake.tasks.jobs` acts on the answers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from deepfake.engine.launcher_env import env_rank
from deepfake.tasks.values import override_key
from deepfake.tracking.checkpoint import atomic_write_text

log = logging.getLogger(__name__)


def earlier_launch(cfg: DictConfig, out_dir: Path, status: dict, previous: dict) -> str | None:
    """A sweep relaunched into its own fixed dir (hydra.sweep.dir) finds its jobs' earlier training
    runs: a finished one is not trained again (its checkpoints and registry entry stay), and one that
    an earlier launch left stopped part-way, or killed (status still running: this process holds the
    run dir's lock), resumes from its last.pth. Returns the earlier run's status when one applies."""
    if cfg.task.name != "train" or cfg.get("resume") or status["attempt"] > 1 or previous.get("task") != "train":
        return None
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    if previous.get("status") in ("stopped", "running") and (out_dir / "last.pth").is_file():
        log.info("%s was left %s by an earlier launch of this sweep: resuming it", out_dir, previous["status"])
        cfg.resume = str(out_dir)
    return previous.get("status")


def another_jobs_dir(out_dir: Path, status: dict, previous: dict) -> bool:
    """Whether a sweep job's dir holds another job's run: an earlier launch into the same
    hydra.sweep.dir whose job of this number had other overrides (a name they share: the overrides
    Hydra leaves out of dir names). Its files are left as they were, and Hydra's copy of this job's
    overrides is replaced by the run's own, so a later resume= continues that run."""
    if HydraConfig.get().mode != RunMode.MULTIRUN or status["attempt"] > 1 or "overrides" not in previous:
        return False
    if same_job(previous["overrides"], status["overrides"]):
        return False
    if env_rank() == 0:
        listed = OmegaConf.to_yaml(OmegaConf.create(list(previous["overrides"])))  # as Hydra writes it
        atomic_write_text(out_dir / ".hydra" / "overrides.yaml", listed)
    return True


def same_job(previous: list, overrides: list) -> bool:
    """Whether a run's recorded overrides are this job's. A job finished or continued by hand
    (``resume=<job dir>``, as its stop line says) recorded the ``resume=`` the rewrite added to its
    own overrides: the same job still, which the sweep's relaunch must not refuse."""

    def settings(listed: list) -> list:
        return sorted(o for o in map(str, listed) if override_key(o) != "resume")

    return settings(previous) == settings(overrides)
