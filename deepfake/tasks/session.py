"""The Hydra session a task runs in: its run dir and name, its overrides, its registry and loggers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from deepfake.engine.launcher_env import env_rank
from deepfake.errors import ConfigError, RunStopped
from deepfake.tasks.jobs import job_run_name, now_iso  # noqa: F401  (now_iso: the tasks' clock)
from deepfake.tracking.registry import Registry
from deepfake.tracking.trackers import GuardedTracker


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def run_name() -> str:
    return job_run_name(run_dir())


def text_list(value) -> list[str]:
    """A list of text from a config list or a single value: ``tags=x`` is ``[x]``, and so is
    ``registry.runs=run1`` (a string is one name, not its letters)."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, int, float)):  # tags=5: one tag, not a TypeError
        return [str(value)]
    items = list(value)
    if any(not isinstance(item, (str, int, float)) for item in items):
        raise ConfigError(f"{value} must be a list of names: [a, b]")
    return [str(item) for item in items]


def run_labels(cfg: DictConfig) -> dict:
    """The run's ``name`` (or None) and ``tags`` for its registry entry."""
    return {"name": None if cfg.get("name") is None else str(cfg.name), "tags": text_list(cfg.get("tags"))}


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task)


def save_resolved_config(cfg: DictConfig, out_dir: Path) -> Path:
    """A resolved copy beside Hydra's own .hydra/config.yaml: the values as they were used."""
    path = out_dir / "config_resolved.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def open_registry(cfg: DictConfig) -> Registry:
    return Registry(Path(cfg.paths.registry), Path(cfg.paths.best_model), float(cfg.registry.lock_timeout_s))


def flat_config(cfg: DictConfig, *, resolve: bool = True) -> dict:
    """The run's config, resolved unless ``resolve=False``, as dotted keys (``optimizer.weight_decay:
    0.05``): the trackers' params. Lists stay whole values (``augment.scale: [0.8, 1.0]``)."""

    def walk(node, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(OmegaConf.to_container(cfg, resolve=resolve), ""))


def build_loggers(cfg: DictConfig) -> list[GuardedTracker]:
    """Every ``logger.<key>`` entry, each behind a guard: a tracker that fails to start, or later,
    costs one warning and never the run. An entry's ``run_name: null`` becomes this run's name."""
    return [GuardedTracker(f"logger.{key}", partial(_instantiate_tracker, node)) for key, node in
            (cfg.get("logger") or {}).items()]  # fmt: skip


def _instantiate_tracker(node: DictConfig):
    named = {"run_name": run_name()} if "run_name" in node and node.run_name is None else {}
    try:
        return instantiate(node, **named)
    except InstantiationException as error:  # the tracker's own error says what went wrong, not Hydra's wrapper
        raise (error.__cause__ or error) from None


@contextmanager
def trackers(cfg: DictConfig) -> Iterator[list[GuardedTracker]]:
    """The task's trackers (rank 0's; none on the other ranks), told the run's config, closed when
    the task ends. The task owns them: a training logs its test to the same tracker runs."""
    opened = build_loggers(cfg) if env_rank() == 0 else []
    params = flat_config(cfg) if opened else {}
    for tracker in opened:
        tracker.log_params(params)
    status = "finished"
    try:
        yield opened
    except (RunStopped, KeyboardInterrupt):
        status = "stopped"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        for tracker in opened:
            tracker.close(status)
