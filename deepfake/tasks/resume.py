"""resume=<run dir>, inside the resumed training task: the checks and the state it goes on from.

The command line was rewritten before Hydra started (:mod:`deepfake.tasks.resume_argv`). Here every
``_target_`` of the resumed config must lie under :data:`ALLOWED_TARGET_PREFIXES` before anything is
built, a refusal puts the run's own overrides back, and ``last.pth`` is read.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from deepfake.engine.launcher_env import env_rank
from deepfake.errors import CheckpointError, ConfigError, UserError
from deepfake.tasks.resume_argv import PREVIOUS_OVERRIDES_ENV, PREVIOUS_STATUS_ENV
from deepfake.tracking.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

# Modules whose callables a config may name; a run dir edited to name os.system is refused.
ALLOWED_TARGET_PREFIXES = ("deepfake.", "torch.optim.", "torch.nn.", "timm.", "torchvision.")


@contextmanager
def overrides_kept_if_refused(cfg: DictConfig, out_dir: Path):
    """A resume refused before it trains (a changed backbone, a schedule shorter than what was
    trained) puts back the run's own ``.hydra/overrides.yaml``, which Hydra had already rewritten
    with the refused ones; otherwise every later plain ``resume=`` would fail the same way."""
    try:
        yield
    except UserError:
        previous = os.environ.get(PREVIOUS_OVERRIDES_ENV) if cfg.get("resume") else None
        if previous is not None and env_rank() == 0:
            atomic_write_text(out_dir / ".hydra" / "overrides.yaml", previous)
        raise


def check_resumed_config(cfg: DictConfig, out_dir: Path) -> None:
    """Before anything is instantiated: the run dir is the one resumed, every _target_ is allowlisted."""
    if not isinstance(cfg.resume, str) or Path(cfg.resume).resolve() != out_dir.resolve():
        raise ConfigError(
            f"resume={cfg.resume} must be launched with scripts/main.py, which opens the resumed run's own dir"
        )
    for key, target in _targets(cfg):
        if not isinstance(target, str) or not target.startswith(ALLOWED_TARGET_PREFIXES):
            raise ConfigError(
                f"{key}={target!r} is not under an allowed module ({', '.join(ALLOWED_TARGET_PREFIXES)}); "
                f"refusing to build it for a resumed run (check {out_dir / '.hydra' / 'overrides.yaml'})"
            )


def _targets(node, prefix: str = ""):
    if isinstance(node, DictConfig):
        for key in node:
            path = f"{prefix}{key}"
            child = node._get_node(key)
            if key == "_target_":
                yield path, OmegaConf.select(node, "_target_", throw_on_resolution_failure=False)
            elif isinstance(child, (DictConfig, ListConfig)):
                yield from _targets(child, f"{path}.")
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            child = node._get_node(index)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _targets(child, f"{prefix}{index}.")


def _how_it_ended(out_dir: Path) -> str:
    """How a run without last.pth ended, as its status.json said before this launch (kept by rewrite_argv)."""
    try:
        ended = json.loads(os.environ.get(PREVIOUS_STATUS_ENV) or "{}")
    except ValueError:
        ended = {}
    if not isinstance(ended, dict) or Path(str(ended.get("run_dir"))).resolve() != out_dir.resolve():
        ended = {}  # resumed without scripts/main.py's rewrite (a requeued job): status.json is this attempt's
    if ended.get("status") == "failed":
        return f"it failed before its first epoch ended: {ended.get('error') or 'see its run.log'}"
    if ended.get("status") == "running":  # never recorded an end: killed (SIGKILL, out of memory, power)
        return "it was killed during its first epoch"
    if ended.get("status") == "stopped":
        return "it was stopped during its first epoch"
    return "it ended during its first epoch"


def load_last_checkpoint(out_dir: Path, model) -> dict | None:
    """The resumed run's last.pth, or None when it ended before its first epoch did."""
    # Imported here: scripts/main.py imports this module on every launch, torch only matters now.
    from deepfake.tasks.checkpoints import check_backbone
    from deepfake.tracking.checkpoint import load_checkpoint

    last = out_dir / "last.pth"
    if not last.is_file():
        log.warning("%s has no last.pth yet (%s): starting it over", out_dir, _how_it_ended(out_dir))
        return None
    checkpoint = load_checkpoint(last)
    if not isinstance(checkpoint.get("trainer_state"), dict):
        raise CheckpointError(f"{last} holds no training state (is it a copied best.pth?); start a new run instead")
    check_backbone(checkpoint, model, str(last))
    state = checkpoint["trainer_state"]
    partial = f" and {state['batches_done']} batch(es) of the next" if state.get("batches_done") else ""
    log.info("resuming from %s: %d epoch(s)%s done", last, state["epoch"], partial)
    return checkpoint
