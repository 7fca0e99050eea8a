"""Config values read as numbers: a value that is not one ends in one line naming its key.

Free of torch, so that task=registry (which must start in a second) can use it too.
"""

from __future__ import annotations

import math

from deepfake.errors import ConfigError


def number(value, key: str, kind: type = float):
    """``value`` as a finite ``kind`` (float or int), or a ConfigError naming ``key``: text such as
    ``predict.top_k=all`` (int()'s traceback), ``dataset.batch_size=2.5`` (int() would make it 2),
    ``true`` (a YAML bool is 1 to int()) and nan or inf (they pass every comparison's refusal)."""
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        result = float(value) if kind is float or isinstance(value, float) else int(value)
        if not math.isfinite(result) or (kind is int and not float(result).is_integer()):
            raise ValueError(value)
        return kind(result)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}={value} is not {'an integer' if kind is int else 'a finite number'}") from None


def non_negative(value, key: str, kind: type = float):
    """``number`` that is 0 or more: a negative learning rate would climb the loss, silently."""
    result = number(value, key, kind)
    if result < 0:
        raise ConfigError(f"{key}={value} must be 0 or more")
    return result


def positive_int(value, key: str) -> int:
    result = number(value, key, int)
    if result <= 0:
        raise ConfigError(f"{key}={value} must be a positive integer")
    return result


def override_key(override: str) -> str:
    """The key a command-line override sets: ``+prune.apply=no`` -> ``prune.apply``."""
    return override.split("=", 1)[0].lstrip("+~")


def flag(value, key: str) -> bool:
    """A true/false setting that gates a deletion: ``value`` itself, or a ConfigError. Text is true to
    Python, so ``prune.apply=flase`` deleted checkpoints; tasks.flags refuses such text given on the
    command line, and this also refuses it from a config file, and numbers."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value} is not true or false; this setting takes true or false")
    return value


def lock_stale_after_s(cfg) -> float:
    """run_lock.stale_after_s, checked: training holds its lock by it, and prune, archive and resume=
    judge other runs' locks by it (float() of a word was a traceback in each)."""
    return non_negative(cfg.run_lock.stale_after_s, "run_lock.stale_after_s")
