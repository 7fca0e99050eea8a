"""Everything a run leaves behind: checkpoints, the model registry, run metadata, logs."""

from deepfake.tracking.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_copy,
    atomic_path,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temps,
)

# `console` (the rich Console) is not re-exported: as a package attribute it would shadow the
# deepfake.tracking.console module, which logging's dictConfig resolves by attribute lookup.
from deepfake.tracking.console import ConsoleHandler, make_console_handler
from deepfake.tracking.loggers import MetricsCsv, MetricsLogger, TensorBoardLogger, Tracker
from deepfake.tracking.registry import Registry
from deepfake.tracking.run_info import git_info, installed_requirements, write_run_info

__all__ = [
    "CHECKPOINT_FORMAT",
    "ConsoleHandler",
    "MetricsCsv",
    "MetricsLogger",
    "Registry",
    "TensorBoardLogger",
    "Tracker",
    "atomic_copy",
    "atomic_path",
    "atomic_save",
    "atomic_write_text",
    "git_info",
    "installed_requirements",
    "load_checkpoint",
    "make_console_handler",
    "remove_stale_temps",
    "write_run_info",
]
