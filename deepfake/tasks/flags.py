"""True/false settings written as words: Hydra reads yes/no/on/off as text, and any text is true.

``prune.apply=no`` deleted the checkpoints it was meant to list and ``archive.remove=no`` removed the
run dir. So a setting whose value is such a word is checked against its default in a config composed
from the same command line without it: where the default is true or false, the job is refused in one
line before anything runs. A text setting (``name=no``) keeps its word. Only a command line holding
such a word pays for the second composition.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from deepfake.errors import ConfigError
from deepfake.tasks.session import flat_config

# Quoted true/false ('false') reach the config as text too.
WORDS = frozenset({"y", "yes", "n", "no", "on", "off", "true", "false"})


def check_flags(cfg: DictConfig, overrides: list[str], config_name: str) -> None:
    """Refuse a true/false setting given one of ``WORDS`` (``overrides``: the job's command line)."""
    suspects = {path: value for path, value in flat_config(cfg, resolve=False).items()
                if isinstance(value, str) and value.strip().lower() in WORDS}  # fmt: skip
    if not suspects:
        return
    from hydra import compose

    kept = [item for item in overrides if _key(item) not in suspects]
    defaults = compose(config_name, overrides=kept)
    for path, value in suspects.items():
        default = OmegaConf.select(defaults, path, default=None, throw_on_resolution_failure=False)
        if isinstance(default, bool):
            raise ConfigError(f"{path}={value} is not true or false; this setting takes true or false "
                              f"(Hydra reads {value!r} as text, and text counts as true)")  # fmt: skip


def _key(override: str) -> str:
    """``+prune.apply=no`` -> ``prune.apply``."""
    return override.split("=", 1)[0].lstrip("+~")
