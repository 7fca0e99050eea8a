"""One terminal for progress bars and log lines.

rich redraws a live progress bar below everything printed through the same Console, so log records
must go through that Console too; a plain StreamHandler writing to stderr would tear the bar apart.
"""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from deepfake.engine.launcher_env import env_rank
from deepfake.errors import error_line

console = Console(stderr=True)


# The width of a summary written to a file or a pipe, where rich would take 80 columns and squeeze a
# table's cells to "tra…": wide enough for the registry's table with full run names.
PIPED_WIDTH = 240


def summary_console() -> Console:
    """A task's summary on stdout: long lines kept whole, and no markup, since what it prints (paths,
    run names, overrides such as ``tags=[a]``) is the user's text, which rich would read as tags.
    Piped or redirected (a log, a CI job), it is as wide as ``PIPED_WIDTH`` unless COLUMNS says."""
    summary = Console(soft_wrap=True, markup=False)
    if not summary.is_terminal and "COLUMNS" not in os.environ:
        summary.width = PIPED_WIDTH
    return summary


LOG_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"


class ConsoleHandler(logging.Handler):
    """Print each record through the shared ``console`` as literal text on one line.

    Without soft wrap rich breaks long lines at the terminal width (paths and metric dicts become
    unreadable and ungreppable); without markup and highlighting a message holding "[...]", such as
    a list or a Hydra override, would be restyled or swallowed as markup tags.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(self.format(record), soft_wrap=True, markup=False, highlight=False, emoji=False)
        except Exception:  # logging must never crash the program it reports on
            self.handleError(record)


class ConsoleFormatter(logging.Formatter):
    """Timestamped lines, except a user's mistake (an error without a traceback), which reads
    ``ERROR <what>; <what to do>`` as in every script; run.log keeps its timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR and not record.exc_info:
            return error_line(record.getMessage())
        return super().format(record)


def make_console_handler(level: int | str = logging.INFO) -> ConsoleHandler:
    """Factory for ``logging.config.dictConfig`` (``"()": deepfake.tracking.console.make_console_handler``).

    A ``formatter`` given in the dictConfig replaces the short default set here.
    """
    handler = ConsoleHandler(level=level)
    handler.setFormatter(ConsoleFormatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT))
    return handler


def progress_bars() -> Progress:
    """Bars drawn on the shared console, gone when done; each task carries a ``status`` field."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
        # Twice a second is enough to watch a bar move; every redraw takes the GIL from the training loop.
        refresh_per_second=2,
        disable=env_rank() != 0,  # under torchrun, rank 0's bars alone
    )
