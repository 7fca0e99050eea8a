"""Shared fixtures: a tiny synthetic dataset, config composition and scripts/main.py as a subprocess.

Everything is written under pytest's tmp dirs; ``paths.root_dir`` moves data/, models/, outputs/ and
multirun/ there, so no test touches the repository's own folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (setup.cfg: one worker per core) every worker and the runs it starts use one
# thread: two workers with torch's default of one thread per core would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
MAIN = REPO / "scripts" / "main.py"


def pytest_configure(config: pytest.Config) -> None:
    """Compile the project's modules once, before any test starts a run. Where PYTHONDONTWRITEBYTECODE
    is set (CI images often set it), every ``scripts/main.py`` the suite starts would otherwise compile
    them again: measured here, 2.3 s of each run's 12 s start-up, over hundreds of runs."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller, or a run without xdist
        import compileall

        compileall.compile_dir(REPO / "deepfake", quiet=1)


# The longest files (measured: minutes each, mostly runs of scripts/main.py) go first, so that the two
# xdist workers (--dist loadfile: a file stays on one worker) end together instead of one of them
# running a long file alone at the end. The rest keep their collection order.
LONGEST_FIRST = (
    "reliability/test_bad_input.py",
    "reliability/test_one_writer.py",
    "integration/test_sweeps.py",
    "integration/test_main_cli.py",
    "reliability/test_flat_memory.py",
    "reliability/test_kill_and_resume.py",
    "integration/test_promotion.py",
    "integration/test_evaluation_cli.py",
    "integration/test_predict_cli.py",
    "integration/test_audit_cli.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}

    def place(item: pytest.Item) -> int:
        try:
            return rank.get(item.path.relative_to(REPO / "tests").as_posix(), len(rank))
        except ValueError:  # a test outside tests/
            return len(rank)

    items.sort(key=place)


# A model of ~0.4M parameters (timm's own test network, with BatchNorm) on 32 px images: a full
# two-phase run takes seconds on two CPU cores.
TINY = [
    "backbone=timm",
    "backbone.name=test_resnet",
    "dataset.img_size=32",
    "dataset.batch_size=16",
    "dataset.generate.n_train=64",
    "dataset.generate.n_valid=32",
    "dataset.generate.n_test=32",
    "phase.head_epochs=1",
    "phase.finetune_epochs=1",
    "phase.warmup_epochs=0",
    "logger=none",
]


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Path:
    """One generated tiny dataset for the whole session (generation is deterministic and idempotent)."""
    return tmp_path_factory.mktemp("data")


def run_main(
    root: Path,
    *overrides: str,
    data_dir: Path | None = None,
    check: bool = True,
    timeout: int = 300,
    env: dict | None = None,
):
    """``python scripts/main.py`` in a subprocess with every path under ``root``."""
    flags = [o for o in overrides if o.startswith("-")]  # Hydra wants -m before the overrides
    args = [sys.executable, str(MAIN), *flags, f"paths.root_dir={root}", *(o for o in overrides if o not in flags)]
    if data_dir is not None:
        args.append(f"paths.data_dir={data_dir}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    if check and result.returncode != 0:
        raise AssertionError(f"main.py failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def main_runner(tmp_path, shared_data_dir):
    def _run(*overrides: str, check: bool = True, tiny: bool = True):
        return run_main(tmp_path, *(TINY if tiny else []), *overrides, data_dir=shared_data_dir, check=check)

    return _run
