"""True/false settings given text: Hydra reads yes/no/on/off, and any typo (``flase``), as text, and any
text is true.

``prune.apply=no`` deleted the checkpoints it was meant to list, ``archive.remove=no`` removed the run
dir, and ``optimizer.fused=flase`` fused the optimizer. So a text value set on the command line (and one
of ``WORDS`` anywhere, a preset's ``no`` too) is checked against its default in a config composed from
the same command line without it: where the default is true or false, the job is refused in one line
before anything runs. A text setting (``name=no``) keeps its text. Only a command line that sets a text
value pays for the second composition (about 0.2 s).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from deepfake.errors import ConfigError
from deepfake.tasks.session import flat_config
from deepfake.tasks.values import override_key

# Quoted true/false ('false') reach the config as text too.
WORDS = frozenset({"y", "yes", "n", "no", "on", "off", "true", "false"})
# False by default, yet also takes a name (train.compile=aot_eager): only WORDS are refused here, its own
# reader refuses a name that is no backend.
TAKES_A_NAME = frozenset({"train.compile"})


def check_flags(cfg: DictConfig, overrides: list[str], config_name: str, composing: list[str] = ()) -> None:
    """Refuse text for a true/false setting (``overrides``: the job's command line; ``composing``: the
    Hydra overrides its composition needs too, ``hydra.searchpath`` for presets of the user's own)."""
    suspects = dict(_text_values(cfg, overrides))
    if not suspects:
        return
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    kept = [item for item in overrides if override_key(item) not in suspects]
    try:
        defaults = compose(config_name, overrides=[*composing, *kept])
    except (HydraException, OmegaConfBaseException):  # the job's own composition stands; no default to judge by
        return
    for path, value in suspects.items():
        if isinstance(_resolved(defaults, path), bool):
            # A word that reads as true or false to people needs the why; a typo is plainly not one.
            why = f" (Hydra reads {value!r} as text, and text counts as true)" if _is_word(value) else ""
            raise ConfigError(f"{path}={value} is not true or false; this setting takes true or false{why}")


def _text_values(cfg: DictConfig, overrides: list[str]):
    """(path, value) of each text set on the command line, and of each of ``WORDS`` anywhere; a value
    such as ``${deterministic}`` is judged by what it resolves to."""
    given = {override_key(item) for item in overrides if "=" in item}
    for path, value in flat_config(cfg, resolve=False).items():
        if not isinstance(value, str):
            continue
        typed = path in given and path not in TAKES_A_NAME and isinstance(_resolved(cfg, path), str)
        if typed or _is_word(value):
            yield path, value


def _is_word(value: str) -> bool:
    return value.strip().lower() in WORDS


def _resolved(cfg: DictConfig, path: str):
    return OmegaConf.select(cfg, path, default=None, throw_on_resolution_failure=False)
