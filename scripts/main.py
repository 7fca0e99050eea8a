"""The single entry point: python scripts/main.py [group=option ...] [key=value ...] [-m].

Examples: `python scripts/main.py`, `python scripts/main.py backbone=resnet50 phase.head_epochs=3`,
`python scripts/main.py task=test ckpt=outputs/train/<run>`, `python scripts/main.py -m seed=1,2`.
"""

import atexit
import gc
import multiprocessing
import multiprocessing.util  # registers its exit hook now, so that the one below runs before it
import os
import signal
import sys
from pathlib import Path

# Importing torch, timm and scikit-learn makes ~900k objects that live as long as the process. The
# cyclic garbage collector would walk them all in each full pass (~0.5 s once they are all in): a
# 3-epoch CvT-13 run spent 1.9 s in collections and 2.0 s more in its exit. So it is off while they
# load, and once the first task's modules are in (settle_heap) what exists is frozen out of its reach
# (gc.freeze, which also spares forked data-loader workers copying those pages); it then collects
# as usual whatever is made after. The price: start-up's own cyclic garbage (~12k objects, a few MB)
# is never freed; a full pass to free it would cost the 0.5 s.
gc.disable()

import hydra  # noqa: E402  (after gc.disable: its imports are start-up too)
from omegaconf import DictConfig  # noqa: E402

# The repository root anchors data/, models/, outputs/ and multirun/ (conf/paths/default.yaml),
# whatever the working directory.
os.environ.setdefault("DEEPFAKE_ROOT", str(Path(__file__).resolve().parents[1]))

from deepfake import tasks  # noqa: E402  (registers the config resolvers before Hydra composes)
from deepfake.engine.launcher_env import env_world_size, under_torchrun  # noqa: E402
from deepfake.engine.stopping import raise_on_sigterm  # noqa: E402
from deepfake.errors import RunStopped, error_line  # noqa: E402
from deepfake.tasks.resolvers import RUN_STAMP_ENV, new_run_stamp  # noqa: E402
from deepfake.tasks.resume_argv import rewrite_argv  # noqa: E402
from hydra_plugins.deepfake_launchers.config import store_launcher_configs  # noqa: E402

# hydra/launcher=joblib, submitit_*: the launchers that outlive a killed job, under the plugins' names.
# Here, in the entry point, not at an import of the package: Hydra's plugin scan imports the project's
# plugin modules, and a store from inside that scan would start the scan again.
store_launcher_configs()

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@atexit.register  # exit hooks run last registered first: before multiprocessing's own
def end_leftover_workers() -> None:
    """Loader workers still alive at exit (kept by an iterator an exception held, or slow to stop under
    load) ignore SIGTERM, which multiprocessing's exit hook sends them before joining them: the process
    then waited for ever after its task had ended. They are killed here first; the task is over. Torch's
    SIGCHLD handler, which raises when a worker dies, goes first: raised here, it left the rest alive."""
    if hasattr(signal, "SIGCHLD"):  # POSIX
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    leftover = [child for child in multiprocessing.active_children() if child.daemon]
    for child in leftover:
        child.kill()
    for child in leftover:
        child.join(timeout=5)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    return tasks.run(cfg, loaded=settle_heap)


def settle_heap() -> None:
    """The first task's modules are imported: freeze what start-up made, then collect as usual. Later
    jobs of a sweep find the collector on: their garbage (a finished job's model) must stay collectable."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def join_torchrun(argv: list[str]) -> None:
    """Under torchrun: refuse a sweep (each rank would run all of it), join the process group, and
    take rank 0's run stamp, so that every rank composes the same run dir."""
    sweep = [
        arg
        for arg in argv
        if arg in ("-m", "--multirun") or arg.lstrip("+").startswith(("hparams_search=", "hydra.mode="))
    ]
    if sweep:
        print(error_line(
            f"{sweep[0]} under torchrun would run the whole sweep once per rank; run torchrun once per "
            "setting, or sweep distributed jobs with hydra/launcher=slurm hydra.launcher.tasks_per_node=N"),
            file=sys.stderr)  # fmt: skip
        sys.exit(2)
    from deepfake.engine import distributed

    distributed.init_from_env()
    os.environ[RUN_STAMP_ENV] = distributed.broadcast_object(new_run_stamp())


if __name__ == "__main__":
    # resume=...: Hydra must open the stopped run's own dir with its own overrides, and it fixes the
    # run dir before main() runs, so the command line is completed first.
    sys.argv[1:] = rewrite_argv(sys.argv[1:], CONF_DIR)
    if under_torchrun() and env_world_size() > 1:
        join_torchrun(sys.argv[1:])
    else:
        # Not under torchrun: its agent ends every rank with SIGTERM when one fails, and a rank waiting
        # in a collective would only see an exception once the wait ends.
        raise_on_sigterm()
    # The one place where outcomes become exit statuses: jobs record theirs and return, so a failed
    # job never ends a sweep; 2 when a job failed on a user's mistake, 1 on a bug.
    try:
        main()
    except RunStopped as stop:
        status = tasks.stop_exit_status(stop)  # the shell's convention for "ended by this signal"
    except KeyboardInterrupt as stop:
        # Ctrl-C or SIGTERM outside training's loop (which ends at a batch's end with RunStopped): while
        # a task sets up or scans, where nothing is half-written; a traceback would read as a bug.
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"stopped by {'Ctrl-C (SIGINT)' if signum == signal.SIGINT else signal.Signals(signum).name}",
              file=sys.stderr)  # fmt: skip
        status = tasks.stop_exit_status(stop)
    else:
        status = tasks.exit_status()
    # Everything is saved and closed: the exit's collections need not walk every object again (~1.5 s
    # with torch loaded); the memory goes back to the system with the process.
    gc.freeze()
    sys.exit(status)
