"""Config values read as numbers: a value that is not one ends in one line naming its key.

Free of torch, so that task=registry (which must start in a second) can use it too.
"""

from __future__ import annotations

from deepfake.errors import ConfigError


def number(value, key: str, kind: type = float):
    """``kind(value)`` (float or int), or a ConfigError naming ``key`` for a value that is not one,
    such as ``predict.top_k=all``, instead of int()'s traceback; ``dataset.batch_size=2.5`` is not an
    integer either (int() would make it 2)."""
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} is not {'an integer' if kind is int else 'a number'}") from None


def non_negative(value, key: str, kind: type = float):
    """``number`` that is 0 or more: a negative learning rate would climb the loss, silently."""
    if number(value, key, kind) < 0:
        raise ConfigError(f"{key}={value} must be 0 or more")
    return kind(value)


def positive_int(value, key: str) -> int:
    if number(value, key, int) <= 0:
        raise ConfigError(f"{key}={value} must be a positive integer")
    return int(value)
