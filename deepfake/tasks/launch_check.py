"""Hydra callback: a sweep's launcher checked before any job is launched.

submitit's SLURM launcher looks for ``srun`` only once the sweep is launching, and off a cluster it
ends the sweep with a traceback; here the same test (submitit's own) comes first, as one line.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deepfake.errors import error_line
from deepfake.tasks.jobs import EXIT_USER_ERROR


class LauncherCheck(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(config.hydra.launcher.get("_target_", ""))
        if not target.endswith(".SlurmLauncher"):
            return
        from submitit.slurm.slurm import SlurmExecutor

        if SlurmExecutor.affinity() > 0:  # submitit's test: srun on PATH
            return
        choice = config.hydra.runtime.choices.get("hydra/launcher", "slurm")
        print(error_line(
            f"hydra/launcher={choice} submits each job to SLURM, and this machine has no srun on PATH: launch the "
            "sweep from a SLURM login node, or run its jobs here with hydra/launcher=submitit_local"),
            file=sys.stderr)  # fmt: skip
        raise SystemExit(EXIT_USER_ERROR)
