"""hydra/launcher=submitit_local, submitit_slurm (and slurm): hydra-submitit-launcher's launchers,
with a sweep that outlives a job killed without a word.

The plugin waits for its jobs' results in order, and the first job that ended without one (SIGKILL,
SLURM's OUT_OF_MEMORY, a node failure, time-outs past ``max_num_timeout``) raised submitit's
``UncompletedJobError`` out of the sweep: a traceback, no summary, and the later jobs left running
unwatched. Here each job's result is awaited on its own; one that has none is a failed job with its
line (the sweep's summary lists it as killed), and the sweep goes on. Unlike joblib's workers, the
other jobs were never touched, so nothing is relaunched: relaunching the sweep into its dir resumes
the killed job from its last.pth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from hydra_plugins.deepfake_launchers.killed import killed_job

log = logging.getLogger(__name__)

# Settings the executor takes when it is made, not with the rest; the others are submitit's names,
# less the cluster's prefix where they are its own (slurm_partition).
_AT_CREATION = ("submitit_folder", "max_num_timeout")


class _EachJobAwaited:
    """``launch`` for the plugin's launchers: the plugin's job function (the launcher itself, called in
    the job), each result awaited on its own."""

    _EXECUTOR: str  # the plugin's cluster name: local, slurm
    params: dict

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import UncompletedJobError

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("submitit (%s) is launching %d jobs into %s", self._EXECUTOR, len(job_overrides), sweep_dir)
        state = Singleton.get_state()
        jobs = [(initial_job_idx + index, list(overrides)) for index, overrides in enumerate(job_overrides)]
        for num, overrides in jobs:
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        submitted = self._executor().map_array(
            self, *zip(*[(overrides, "hydra.sweep.dir", num, f"job_id_for_{num}", state) for num, overrides in jobs])
        )  # fmt: skip
        returns = []
        for (num, overrides), job in zip(jobs, submitted):
            try:
                returns.append(job.results()[0])
            except UncompletedJobError:
                why = f"its {self._EXECUTOR} job {job.job_id} ended without a result (submitit's state: {job.state})"
                returns.append(killed_job(num, overrides, why, sweep_dir))
        return returns

    def _executor(self):
        import submitit

        cluster, params = self._EXECUTOR, self.params
        timeouts = {f"{cluster}_max_num_timeout": params["max_num_timeout"]} if "max_num_timeout" in params else {}
        executor = submitit.AutoExecutor(cluster=cluster, folder=params["submitit_folder"], **timeouts)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"{cluster}_{key}": value
                                      for key, value in params.items() if key not in _AT_CREATION})  # fmt: skip
        return executor


class LocalLauncher(_EachJobAwaited, submitit_launcher.LocalLauncher):
    pass


class SlurmLauncher(_EachJobAwaited, submitit_launcher.SlurmLauncher):
    pass
