"""What a wheel (or a non-editable pip install) holds: every module of the package."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

from setuptools import find_namespace_packages

REPO = Path(__file__).resolve().parents[2]


def test_every_folder_of_modules_is_a_package_that_setup_cfg_includes():
    """deepfake/engine once had no __init__.py: setuptools' find: left it out of every wheel, and only
    the editable install that CI uses still imported it."""
    folders = {p.parent for p in (REPO / "deepfake").rglob("*.py")} | {
        p.parent for p in (REPO / "hydra_plugins").rglob("*.py")
    }
    assert all((folder / "__init__.py").is_file() for folder in folders), sorted(
        str(f) for f in folders if not (f / "__init__.py").is_file()
    )
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(REPO / "setup.cfg")
    assert setup_cfg["options"]["packages"].strip() == "find_namespace:"
    include = [name.strip() for name in setup_cfg["options.packages.find"]["include"].split(",")]
    included = set(find_namespace_packages(str(REPO), include=include))
    assert {".".join(folder.relative_to(REPO).parts) for folder in folders} <= included


def test_hydras_plugin_scan_runs_the_projects_plugin_modules_as_an_installed_package_has_them():
    """An installed (not editable) package puts hydra_plugins/deepfake_* in Hydra's plugin scan, which
    executes each module outside sys.modules: the launcher configs' dataclasses failed there on their
    string annotations, before any config was composed."""
    scan = "from hydra.core.plugins import Plugins; Plugins.instance(); import deepfake.tasks"
    done = subprocess.run([sys.executable, "-c", scan], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO / "tests")  # fmt: skip
    assert done.returncode == 0, done.stderr
