"""The single entry point: python scripts/main.py [group=option ...] [key=value ...] [-m].

Examples: `python scripts/main.py`, `python scripts/main.py backbone=resnet50 phase.head_epochs=3`,
`python scripts/main.py task=test ckpt=outputs/train/<run>`, `python scripts/main.py -m seed=1,2`.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

# The repository root anchors data/, models/, outputs/ and multirun/ (conf/paths/default.yaml),
# whatever the working directory.
os.environ.setdefault("DEEPFAKE_ROOT", str(Path(__file__).resolve().parents[1]))

from deepfake import tasks  # noqa: E402  (registers the config resolvers before Hydra composes)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    return tasks.run(cfg)


if __name__ == "__main__":
    main()
