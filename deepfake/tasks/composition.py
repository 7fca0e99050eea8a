"""The config scripts/main.py composes, read by the scripts beside it (make_batches, bench_switches)
to find where the runs they start or feed will read and write."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from deepfake.errors import ConfigError


def composed_value(conf_dir: Path, overrides: list[str], pick: Callable[[DictConfig], Any]) -> Any:
    """``pick(cfg)`` of the config composed from ``overrides``, paths anchored as scripts/main.py anchors
    them (DEEPFAKE_ROOT, by default the repository); a bad override, whether composing or resolving
    the picked values raised, is a ConfigError naming the overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault("DEEPFAKE_ROOT", str(Path(conf_dir).resolve().parent))
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return pick(compose("config", overrides=overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"{' '.join(str(error).split())}; check the overrides: {' '.join(overrides)}") from error
