"""OmegaConf resolvers the configs use; registered before Hydra composes anything."""

from __future__ import annotations

import secrets
from datetime import datetime

from omegaconf import OmegaConf


def run_stamp() -> str:
    """``2026-11-25_08-01-02_3fa9``: sortable by time, and unique even for launches in the same second."""
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(2)}"


def register_resolvers() -> None:
    # use_cache: one value per process, and Hydra copies the cache into each sweep job's config,
    # so every reference to a run's stamp agrees.
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
