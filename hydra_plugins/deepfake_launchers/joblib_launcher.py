"""hydra/launcher=joblib: hydra-joblib-launcher's launcher, with a sweep that outlives a worker killed without a word.

joblib's loky backend answers a worker that dies (SIGKILL, the out-of-memory killer, a segfault) by
raising ``TerminatedWorkerError`` from the whole ``Parallel`` call and killing the other workers:
the sweep ended with that traceback, no summary, and the jobs running beside the dead one killed
with it. Here the jobs are run through the plugin's own ``execute_job``, their returns collected as
each ends, so a worker's death loses only the jobs that had not returned. Those are launched again
(``relaunches`` times, 1 by default) in the same job dirs: a killed training job resumes from its
last.pth, as any job of a sweep relaunched into its dir does. A job still unfinished after the last
relaunch is a failed job with its line; the sweep goes on, and its summary lists it as killed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher._core import execute_job, process_joblib_cfg
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from joblib import Parallel, delayed
from joblib.externals.loky.process_executor import TerminatedWorkerError

from hydra_plugins.deepfake_launchers.killed import killed_job

log = logging.getLogger(__name__)


class RelaunchingJoblibLauncher(JoblibLauncher):
    def __init__(self, relaunches: int = 1, **joblib_settings) -> None:
        super().__init__(**joblib_settings)
        self.relaunches = relaunches

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        settings = {**self.joblib, "backend": "loky"}  # as the plugin: its threads backend breaks Hydra
        process_joblib_cfg(settings)
        pending = {initial_job_idx + index: list(overrides) for index, overrides in enumerate(job_overrides)}
        log.info("joblib (n_jobs=%s) is launching %d jobs into %s", settings.get("n_jobs"), len(pending),
                 self.config.hydra.sweep.dir)  # fmt: skip
        for num, overrides in pending.items():
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        returns: dict[int, JobReturn] = {}
        death = None
        for attempt in range(self.relaunches + 1):
            if attempt:
                log.warning("relaunching job(s) %s (%d of hydra.launcher.relaunches=%d)",
                            ", ".join(map(str, pending)), attempt, self.relaunches)  # fmt: skip
            try:
                for num, job_return in self._run(pending, settings):
                    returns[num] = job_return
                    del pending[num]
                return [returns[num] for num in sorted(returns)]
            except TerminatedWorkerError as error:
                death = _worker_exit(error)
                log.error("a joblib worker process died (%s: out of memory, or killed), and with it every job "
                          "that had not returned: %s", death, ", ".join(map(str, pending)))  # fmt: skip
        again = f" again after {self.relaunches} relaunch(es)" if self.relaunches else ""
        for num, overrides in pending.items():
            why = f"the joblib worker running it died ({death}){again}"
            returns[num] = killed_job(num, overrides, why, self.config.hydra.sweep.dir)
        return [returns[num] for num in sorted(returns)]

    def _run(self, jobs: dict[int, list[str]], settings: dict):
        """``(job number, its JobReturn)`` for each of ``jobs`` as it ends, in any order."""
        state = Singleton.get_state()
        return Parallel(return_as="generator_unordered", **settings)(
            delayed(_numbered)(num, overrides, self.hydra_context, self.config, self.task_function, state)
            for num, overrides in list(jobs.items())
        )  # fmt: skip


def _numbered(num: int, overrides: list[str], *context) -> tuple[int, JobReturn]:
    """One job in a worker, its number beside its return (unordered returns must say whose they are)."""
    return num, execute_job(num, overrides, *context)


def _worker_exit(error: TerminatedWorkerError) -> str:
    """loky's exit codes of the dead workers ("SIGKILL(-9)"), else its message's first line."""
    found = re.search(r"exit codes of the workers are \{(.*?)\}", str(error))
    return found.group(1) if found else str(error).splitlines()[0]
