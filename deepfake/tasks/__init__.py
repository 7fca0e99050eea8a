"""Tasks: the only code that reads the Hydra config and wires library objects together.

``run(cfg)`` dispatches on ``cfg.task.name``. A :class:`~deepfake.errors.UserError` ends the
process with its one line and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from importlib import import_module

from omegaconf import DictConfig

from deepfake.errors import UserError, find_in_chain
from deepfake.tasks.resolvers import register_resolvers

log = logging.getLogger(__name__)

# task name -> module under deepfake.tasks defining run(cfg). Imported lazily: `task=registry`
# should not pay for importing torch models.
TASKS = {"train": "train", "test": "test", "registry": "registry", "cam": "cam"}

register_resolvers()


def run(cfg: DictConfig):
    """Run the configured task; returns its optimised metric (sweepers read it) or None."""
    # Library warnings (torch, timm, PIL) then reach run.log too, not only the terminal.
    logging.captureWarnings(True)
    name = cfg.task.name
    if name not in TASKS:
        log.error("task=%s is unknown; choose one of: %s", name, ", ".join(TASKS))
        sys.exit(2)
    try:
        return import_module(f"deepfake.tasks.{TASKS[name]}").run(cfg)
    except Exception as err:
        user_error = _user_error_in(err)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(2)


def _user_error_in(err: BaseException) -> UserError | None:
    """The UserError behind ``err``: hydra.utils.instantiate wraps what a _target_ raised."""
    return find_in_chain(err, lambda e: isinstance(e, UserError))
