"""Helpers the test modules share: the one folder a command made, the registry as written, and the
lines of a user's mistake."""

from __future__ import annotations

import json
from pathlib import Path


def only_dir(parent: Path) -> Path:
    """The single folder under ``parent`` (a task's one run dir)."""
    children = [path for path in parent.iterdir() if path.is_dir()]
    assert len(children) == 1, children
    return children[0]


def registry(root: Path) -> dict:
    """``<root>/models/model_metadata.json`` as written; no runs when there is none."""
    path = root / "models" / "model_metadata.json"
    return json.loads(path.read_text()) if path.is_file() else {"runs": []}


def error_lines(result) -> list[str]:
    """The lines in the one format of a user's mistake, ``ERROR <what>; <what to do>``, and only those
    (a log line with [ERROR] in it is not one)."""
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("ERROR ")]
