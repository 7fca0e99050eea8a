"""Shared fixtures: a tiny synthetic dataset, config composition and scripts/main.py in its own process.

Everything is written under pytest's tmp dirs; ``paths.root_dir`` moves data/, models/, outputs/ and
multirun/ there, so no test touches the repository's own folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import forked_cli
import pytest

# Under pytest-xdist (setup.cfg: one worker per core) every worker and the runs it starts use one
# thread: two workers with torch's default of one thread per core would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# The files that take longest on 2 cores (pytest --durations, longest first), started first: xdist
# hands each worker whole files (--dist loadfile, --no-loadscope-reorder) in collection order, and a
# long file started last kept one worker busy a minute or more after the other had finished.
LONGEST_FIRST = (
    "reliability/test_flat_memory.py",
    "integration/test_sweeps.py",
    "reliability/test_one_writer.py",
    "reliability/test_bad_input.py",
    "reliability/test_killed_sweep_jobs.py",
    "integration/test_main_cli.py",
    "integration/test_predict_cli.py",
    "integration/test_distributed_cli.py",
    "unit/test_onnx_export.py",
    "integration/test_evaluation_cli.py",
    "integration/test_trackers.py",
    "integration/test_bench_cli.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: order for order, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].removeprefix("tests/"), len(rank)))


REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
MAIN = REPO / "scripts" / "main.py"


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
    fresh: bool = False,
):
    """``python scripts/main.py`` in its own process with every path under ``root``: forked from a warm
    interpreter (forked_cli.py), or a fresh interpreter with ``fresh=True``."""
    flags = [o for o in overrides if o.startswith("-")]  # Hydra wants -m before the overrides
    args = [*flags, f"paths.root_dir={root}", *(o for o in overrides if o not in flags)]
    if data_dir is not None:
        args.append(f"paths.data_dir={data_dir}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    result = forked_cli.run(args, root, env, timeout, fresh)
    if check and result.returncode != 0:
        raise AssertionError(f"main.py failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def main_runner(tmp_path, shared_data_dir):
    def _run(*overrides: str, check: bool = True, tiny: bool = True, fresh: bool = False):
        return run_main(
            tmp_path, *(TINY if tiny else []), *overrides, data_dir=shared_data_dir, check=check, fresh=fresh
        )

    return _run
