"""Tasks: the only code that reads the Hydra config and wires library objects together.

``run(cfg)`` dispatches on ``cfg.task.name``. A :class:`~deepfake.errors.UserError` ends the
process with its one line and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from importlib import import_module

from omegaconf import DictConfig

from deepfake.errors import UserError
from deepfake.tasks.resolvers import register_resolvers

log = logging.getLogger(__name__)

# task name -> module under deepfake.tasks defining run(cfg). Imported lazily: `task=registry`
# should not pay for importing torch models.
TASKS = {"train": "train", "test": "test", "registry": "registry"}

register_resolvers()


def run(cfg: DictConfig):
    """Run the configured task; returns its optimised metric (sweepers read it) or None."""
    name = cfg.task.name
    if name not in TASKS:
        log.error("task=%s is unknown; choose one of: %s", name, ", ".join(TASKS))
        sys.exit(2)
    try:
        return import_module(f"deepfake.tasks.{TASKS[name]}").run(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(2)
