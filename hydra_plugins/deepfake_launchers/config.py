"""The launcher configs as this project has them: the plugins' settings, their launchers wrapped
(joblib_launcher.py, submitit_launchers.py), and joblib's ``relaunches``. Stored under the plugins'
own names, replacing their nodes, so that the launchers users know by name are the ones that outlive
a killed job.

No ``from __future__ import annotations``: Hydra's plugin scan executes this module outside
sys.modules (an installed, not editable, package), where dataclasses cannot resolve string annotations.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

PACKAGE = "hydra_plugins.deepfake_launchers"


@dataclass
class RelaunchingJoblibConf(JobLibLauncherConf):
    _target_: str = f"{PACKAGE}.joblib_launcher.RelaunchingJoblibLauncher"
    # Launches again of the jobs that a worker's death took down (a killed job resumes from its last.pth).
    relaunches: int = 1


def store_launcher_configs() -> None:
    """Before Hydra composes (scripts/main.py). Hydra's plugin scan runs every plugin module again, even
    one already imported, and with it the plugin's own store: the scan is run first (once per process;
    Hydra reuses it), so that these nodes replace the plugins' for good."""
    from hydra.core.plugins import Plugins

    Plugins.instance()
    store = ConfigStore.instance().store
    store(group="hydra/launcher", name="joblib", node=RelaunchingJoblibConf, provider="deepfake")
    try:  # the [slurm] extra
        from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    except ImportError:
        return

    @dataclass
    class LocalConf(LocalQueueConf):
        _target_: str = f"{PACKAGE}.submitit_launchers.LocalLauncher"

    @dataclass
    class SlurmConf(SlurmQueueConf):
        _target_: str = f"{PACKAGE}.submitit_launchers.SlurmLauncher"

    store(group="hydra/launcher", name="submitit_local", node=LocalConf, provider="deepfake")
    store(group="hydra/launcher", name="submitit_slurm", node=SlurmConf, provider="deepfake")
