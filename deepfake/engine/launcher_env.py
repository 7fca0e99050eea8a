"""What the launcher says about this process, read from the environment before torch is imported.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and ``TORCHELASTIC_RUN_ID``; a SLURM job that
submitit runs with several tasks sets ``SLURM_PROCID``/``SLURM_NTASKS`` (submitit's local executor,
``SUBMITIT_LOCAL_GLOBALID``/``SUBMITIT_LOCAL_NTASKS``). The config resolvers need the rank before
Hydra composes (which log file, whether to write ``.hydra/``), so this stays stdlib only.
"""

from __future__ import annotations

import os


def env_rank() -> int:
    """This process's global rank as the launcher announced it; usable before any process group exists."""
    if os.environ.get("RANK"):
        return int(os.environ["RANK"])
    return int(os.environ.get(_SUBMITIT_VARS[_submitit()][0], "0")) if _submitit_multi_task() else 0


def env_world_size() -> int:
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    return _submitit_tasks() if _submitit_multi_task() else 1


def under_torchrun() -> bool:
    """torchrun (torch.distributed.run / elastic_launch) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


# submitit's executor -> (this task's global rank, the job's number of tasks)
_SUBMITIT_VARS = {
    "slurm": ("SLURM_PROCID", "SLURM_NTASKS"),
    "local": ("SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS"),  # hydra/launcher=submitit_local
}


def _submitit() -> str:
    return os.environ.get("SUBMITIT_EXECUTOR", "")


def _submitit_tasks() -> int:
    return int(os.environ.get(_SUBMITIT_VARS[_submitit()][1], "1") or 1)


def _submitit_multi_task() -> bool:
    """A submitit job with several tasks: each task is one rank of one distributed run."""
    return _submitit() in _SUBMITIT_VARS and _submitit_tasks() > 1
