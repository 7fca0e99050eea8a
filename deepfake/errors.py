"""Errors that are the user's to fix.

A ``UserError`` carries one line that names the file, row or key at fault and says what to do.
The entry point prints that line and exits non-zero without a traceback; every other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable


def find_in_chain(error: BaseException, matches: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in ``error``'s cause/context chain that ``matches``, or None.

    Libraries wrap what they catch (hydra.utils.instantiate, torch.save), so the exception that
    says what went wrong is often not the one raised last.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if matches(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def error_line(message: str) -> str:
    """The one form every script and task ends a user's mistake with: ``ERROR <what>; <what to do>``."""
    return f"ERROR {message}"


class UserError(Exception):
    """A mistake in the user's input (config, CSV, file path, checkpoint): one line, no traceback."""


class DataError(UserError):
    """A dataset CSV or image tree that cannot be used as given."""


class CheckpointError(UserError):
    """A checkpoint or weights file that is missing, foreign or incompatible."""


class ConfigError(UserError):
    """A config value that is well-formed for Hydra but unusable (bad combination, impossible size)."""


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class RunDirLocked(UserError):
    """Another live process is writing the run dir: a second writer would interleave two histories."""


class ExportError(UserError):
    """An exported model that does not reproduce its checkpoint; no file is left behind."""


class ArchiveError(UserError):
    """An archive that, read back, does not hold what was packed into it; no source was removed."""


class RunStopped(BaseException):
    """A stop signal ended the run after ``last.pth`` was saved: not a failure, not an error.

    A BaseException, like KeyboardInterrupt, so that neither a job wrapper nor Hydra's launchers
    take it for a failed job: it reaches the entry point, which exits with the shell's status for
    the signal (128 + its number), and a sweep stops too.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class OtherRankFailed(UserError):
    """Under torchrun, another rank failed in a step all ranks take together; its line is in its log."""
