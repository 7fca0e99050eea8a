"""The single entry point: python scripts/main.py [group=option ...] [key=value ...] [-m].

Examples: `python scripts/main.py`, `python scripts/main.py backbone=resnet50 phase.head_epochs=3`,
`python scripts/main.py task=test ckpt=outputs/train/<run>`, `python scripts/main.py -m seed=1,2`.
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# The repository root anchors data/, models/, outputs/ and multirun/ (conf/paths/default.yaml),
# whatever the working directory.
os.environ.setdefault("DEEPFAKE_ROOT", str(Path(__file__).resolve().parents[1]))

from deepfake import tasks  # noqa: E402  (registers the config resolvers before Hydra composes)
from deepfake.engine.launcher_env import env_world_size, under_torchrun  # noqa: E402
from deepfake.errors import RunStopped, error_line  # noqa: E402
from deepfake.tasks.resolvers import RUN_STAMP_ENV, new_run_stamp  # noqa: E402
from deepfake.tasks.resume import rewrite_argv  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    return tasks.run(cfg)


def join_torchrun(argv: list[str]) -> None:
    """Under torchrun: refuse a sweep (each rank would run all of it), join the process group, and
    take rank 0's run stamp, so that every rank composes the same run dir."""
    sweep = [arg for arg in argv if arg in ("-m", "--multirun") or arg.startswith(("hparams_search=", "hydra.mode="))]
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
    # The one place where outcomes become exit statuses: jobs record theirs and return, so a failed
    # job never ends a sweep; 2 when a job failed on a user's mistake, 1 on a bug.
    try:
        main()
    except RunStopped as stop:
        sys.exit(128 + stop.signum)  # the shell's convention for "ended by this signal"
    sys.exit(tasks.exit_status())
