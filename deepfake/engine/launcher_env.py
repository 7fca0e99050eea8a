"""What the launcher says about this process, read from the environment before torch is imported.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and ``TORCHELASTIC_RUN_ID``; a SLURM job that
submitit runs with several tasks sets ``SLURM_PROCID``/``SLURM_NTASKS``. The config resolvers need the
rank before Hydra composes (which log file, whether to write ``.hydra/``), so this stays stdlib only.
"""

from __future__ import annotations

import os


def env_rank() -> int:
    """This process's global rank as the launcher announced it; usable before any process group exists."""
    if os.environ.get("RANK"):
        return int(os.environ["RANK"])
    return int(os.environ.get("SLURM_PROCID", "0")) if _slurm_multi_task() else 0


def env_world_size() -> int:
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    return int(os.environ["SLURM_NTASKS"]) if _slurm_multi_task() else 1


def under_torchrun() -> bool:
    """torchrun (torch.distributed.run / elastic_launch) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def _slurm_multi_task() -> bool:
    """A submitit job with several tasks: each task is one rank of one distributed run."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR")) and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


