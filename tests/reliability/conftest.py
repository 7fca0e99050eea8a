"""Session fixtures of the fault-injection tests (helpers live in faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.faults import RELIABLE, run, run_dir_of


@pytest.fixture(scope="session")
def reliable_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliable_data")


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, reliable_data) -> Path:
    """The reference: the RELIABLE run, never interrupted (it also generates the shared data)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    result = run(root, reliable_data, *RELIABLE)
    assert result.returncode == 0, result.stderr
    return run_dir_of(root)
