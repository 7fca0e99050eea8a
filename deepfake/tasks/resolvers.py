"""OmegaConf resolvers the configs use; registered before Hydra composes anything."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from datetime import datetime

from omegaconf import OmegaConf

from deepfake.engine.launcher_env import env_rank

# Under torchrun, rank 0's stamp, broadcast by scripts/main.py before Hydra composes: every rank
# then opens the same run dir.
RUN_STAMP_ENV = "DEEPFAKE_RUN_STAMP"


def run_stamp() -> str:
    """``2026-11-25_08-01-02_3fa9``: sortable by time, and unique even for launches in the same second."""
    return os.environ.get(RUN_STAMP_ENV) or new_run_stamp()


def new_run_stamp() -> str:
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(2)}"


def rank_log_name() -> str:
    """``run.log`` for rank 0 (and a single process), ``run.rank<K>.log`` for the other ranks."""
    rank = env_rank()
    return "run.log" if rank == 0 else f"run.rank{rank}.log"


def rank_console_level() -> str:
    """Under torchrun only rank 0 narrates on the terminal; the other ranks show their warnings."""
    return "INFO" if env_rank() == 0 else "WARNING"


def hydra_output_subdir() -> str | None:
    """Hydra's ``.hydra/`` (config, overrides) is written by rank 0 alone."""
    return ".hydra" if env_rank() == 0 else None


DIR_SUFFIX_MAX = 120


def dir_suffix(text) -> str:
    """``_<text>`` for a run dir's name (``name=expt 1`` -> ``_expt-1``; a sweep job's overrides),
    with what a file name cannot hold replaced; "" for none. Text longer than DIR_SUFFIX_MAX is cut and
    ends with a hash of the whole, so jobs whose overrides differ only past the cut keep their own dirs
    (a relaunched sweep took another job's dir, and its result)."""
    if text is None or str(text) == "":
        return ""
    text = str(text)
    safe = re.sub(r"[^A-Za-z0-9._,=+-]+", "-", text)
    if len(safe) <= DIR_SUFFIX_MAX:
        return "_" + safe.strip("-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return "_" + safe[: DIR_SUFFIX_MAX - 9].strip("-") + "-" + digest


# conf/dataset/synthetic.yaml's generate settings: the embedded dataset's folder keeps the plain name.
SYNTHETIC_DEFAULTS = {"n": ("600", "200", "200"), "seed": "0", "jpeg_quality": "95", "partial_fraction": "0.3",
                      "generator": "transposed_conv"}  # fmt: skip


def synthetic_folder(image_size, n_train, n_valid, n_test, partial_fraction, jpeg_quality, seed, generator) -> str:
    """The generated dataset's folder under the project's cache: ``64px`` for the default settings,
    ``32px-n64-32-32`` (``-seed1``, ``-q80``, ``-partial0.5``, ``-blending``) for others. A folder per
    settings: a run or a task=test with other settings gets its own images instead of regenerating,
    under a run that reads them, the folder they share. Each value is written in full (``2e+07`` would
    give two seeds one folder), and one that is no number is kept as typed for the generator to refuse."""
    counts = tuple(map(_exact, (n_train, n_valid, n_test)))
    name = f"{_exact(image_size)}px" + ("" if counts == SYNTHETIC_DEFAULTS["n"] else "-n" + "-".join(counts))
    for key, label, value in (("seed", "seed", seed), ("jpeg_quality", "q", jpeg_quality),
                              ("partial_fraction", "partial", partial_fraction), ("generator", "", generator)):  # fmt: skip
        if _exact(value) != SYNTHETIC_DEFAULTS[key]:
            name += f"-{label}{_exact(value)}"
    return dir_suffix(name)[1:]  # what a file name cannot hold replaced, as a run dir's suffix


def _exact(value) -> str:
    """A setting as text that tells every value apart: whole numbers without a point, others by repr."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else repr(number)


def register_resolvers() -> None:
    # use_cache: one value per process, and Hydra copies the cache into each sweep job's config,
    # so every reference to a run's stamp agrees.
    for name, resolver in (("run_stamp", run_stamp), ("rank_log_name", rank_log_name),
                           ("rank_console_level", rank_console_level), ("hydra_output_subdir", hydra_output_subdir),
                           ("dir_suffix", dir_suffix), ("synthetic_folder", synthetic_folder)):  # fmt: skip
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=True)
