"""hydra/launcher=joblib as this project has it: the plugin's settings, its launcher wrapped
(joblib_launcher.py), and ``relaunches``. Stored under the plugin's own name, replacing its node,
so that the launcher users know by name is the one that outlives a dead worker."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf


@dataclass
class RelaunchingJoblibConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.deepfake_joblib.joblib_launcher.RelaunchingJoblibLauncher"
    # Launches again of the jobs that a worker's death took down (a killed job resumes from its last.pth).
    relaunches: int = 1


def store_joblib_config() -> None:
    """Before Hydra composes. Hydra's plugin scan runs every plugin module again, even one already
    imported, and with it the plugin's own store: the scan is run first (once per process; Hydra
    reuses it), so that this node replaces the plugin's for good."""
    from hydra.core.plugins import Plugins

    Plugins.instance()
    ConfigStore.instance().store(group="hydra/launcher", name="joblib", node=RelaunchingJoblibConf,
                                 provider="deepfake")  # fmt: skip
