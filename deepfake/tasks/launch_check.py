"""Hydra callback: a sweep's launcher checked, and made known to Hydra, before any job is launched.

submitit's SLURM launcher looks for ``srun`` only once the sweep is launching, and off a cluster it
ends the sweep with a traceback; here the same test (submitit's own) comes first, as one line.
The launchers joblib and submitit_* are this project's (hydra_plugins/deepfake_launchers), made known
to Hydra here: an editable install hides them from Hydra's scan of the hydra_plugins namespace.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deepfake.errors import ConfigError, error_line
from deepfake.tasks import values
from deepfake.tasks.jobs import EXIT_USER_ERROR
from hydra_plugins.deepfake_launchers.config import PACKAGE as LAUNCHERS


class LauncherCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_an_unwritable_folder(config, "hydra.run.dir", "paths.log_dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_an_unwritable_folder(config, "hydra.sweep.dir", "paths.multirun_dir")
        target = str(config.hydra.launcher.get("_target_", ""))
        if target.startswith(f"{LAUNCHERS}."):
            _register(target, config.hydra.launcher)
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


def _register(target: str, settings: DictConfig) -> None:
    from hydra.core.plugins import Plugins
    from hydra.utils import get_class

    if "relaunches" in settings:  # joblib's
        try:
            values.non_negative(settings.relaunches, "hydra.launcher.relaunches", int)
        except ConfigError as error:
            print(error_line(str(error)), file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
    Plugins.instance().register(get_class(target))  # a class of this project's package, by its prefix


def _refuse_an_unwritable_folder(config: DictConfig, key: str, setting: str) -> None:
    """The folder Hydra makes the run (or sweep) dir in, made now: Hydra's own attempt, unwritable
    (a read-only disk, a path through a file), ended every task in its traceback."""
    from omegaconf import OmegaConf

    try:
        folder = Path(str(OmegaConf.select(config, key))).parent
    except Exception:  # noqa: BLE001 - an unresolvable setting is Hydra's to report, as before
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"[Errno 13] Permission denied: '{folder}'")
    except OSError as error:
        print(error_line(f"cannot make run dirs in {folder} ({error.strerror or error}); point {setting} (or "
                         "paths.root_dir) at a folder you can write"), file=sys.stderr)  # fmt: skip
        raise SystemExit(EXIT_USER_ERROR) from None
