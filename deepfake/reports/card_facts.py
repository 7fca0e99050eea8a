"""What a model card states, gathered from what a run left behind.

The checkpoint describes the model and its operating point; its run dir holds the recipe
(config_resolved.yaml), the code version (git.txt) and the test report (metrics_test.json); the
registry entry holds the run's history (epochs, damaged images, later evaluations). The split CSVs
are read again for their counts and sha256. A missing source leaves its facts out, never fails.

A run's measurements (its test report, the registry's test and CAM figures) are of the checkpoint they
name by sha256: a copy of an earlier best.pth of the same run was carded with the final one's figures.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from deepfake import __version__
from deepfake.data.csv_dataset import labels_to_targets, read_raw_csv, require_column
from deepfake.data.manifest import file_sha256
from deepfake.errors import DataError

SPLITS = {"train": "train_csv", "valid": "val_csv", "test": "test_csv"}
# A registry entry's figures measured on the run's best.pth (its history is the run's).
MEASURED = ("test_metrics", "cam_metrics")


@dataclass
class CardFacts:
    checkpoint_path: Path
    checkpoint_sha256: str
    checkpoint: dict  # without the weights
    run_dir: Path | None
    config: dict = field(default_factory=dict)  # the run's resolved config
    git: dict = field(default_factory=dict)  # commit, dirty
    test: dict = field(default_factory=dict)  # metrics_test.json, or the registry's view of it
    no_test: str = ""  # why ``test`` is empty, or how it was matched to this checkpoint when it is not
    entry: dict = field(default_factory=dict)  # the registry entry
    data: dict = field(default_factory=dict)  # split -> {csv, images, real, fake, sha256} or {csv, error}
    written_at: str = ""
    best_model: Path | None = None  # the registry's global best (paths.best_model), named plainly
    version: str = __version__


def find_run_dir(checkpoint_path: Path, entry: dict | None) -> Path | None:
    """The run dir behind a checkpoint: its own folder for a run's best.pth, else the registry's record."""
    if (checkpoint_path.parent / "config_resolved.yaml").is_file():
        return checkpoint_path.parent
    recorded = Path(entry["run_dir"]) if entry and entry.get("run_dir") else None
    return recorded if recorded is not None and recorded.is_dir() else None


def recorded_config(entry: dict | None) -> dict:
    """The resolved config a registry entry's run saved; {} when its run dir is gone (archived, moved)."""
    entry = entry or {}
    path = entry.get("config_path") or (entry.get("run_dir") and Path(entry["run_dir"]) / "config_resolved.yaml")
    return _read_yaml(Path(path)) if path else {}


def configured_data(config: dict, split: str) -> tuple[str, str] | None:
    """``data_identity`` of a resolved config's ``split`` (train, valid, test); None when it names none."""
    dataset = config.get("dataset") or {}
    csv, root = dataset.get(SPLITS[split]), dataset.get("root_dir")
    return None if csv is None or root is None else data_identity(csv, root)


def data_identity(csv, root_dir) -> tuple[str, str]:
    """A CSV and the folder its paths are read under, each spelled one way (absolute) to be compared:
    the same CSV under another folder (a degraded copy of the images) is another set."""
    return os.path.abspath(str(csv)), os.path.abspath(str(root_dir))


def collect_facts(
    checkpoint_path: Path, checkpoint: dict, entry: dict | None, best_model: Path | None = None,
    sha256: str | None = None,
) -> CardFacts:  # fmt: skip
    """``best_model``: the registry's global best (paths.best_model), whose card takes the plain name;
    ``sha256``: of the bytes ``checkpoint`` was loaded from; without it the file is hashed here, as it
    is now, which a promotion may have replaced since it was loaded."""
    run_dir = find_run_dir(checkpoint_path, entry)
    config = _read_yaml(run_dir / "config_resolved.yaml") if run_dir else {}
    entry = entry or {}
    sha256 = sha256 or file_sha256(checkpoint_path)
    test, no_test = _test_report(checkpoint, sha256, run_dir, entry, config)
    if not measures(entry.get("checkpoint_sha256"), (entry.get("operating_point") or {}).get("threshold"),
                    checkpoint, sha256):  # fmt: skip
        entry = {key: value for key, value in entry.items() if key not in MEASURED}
    return CardFacts(
        checkpoint_path=checkpoint_path,
        checkpoint_sha256=sha256,
        checkpoint={key: value for key, value in checkpoint.items() if key != "model"},
        run_dir=run_dir,
        config=config,
        git=_read_git(run_dir / "git.txt") if run_dir else {},
        test=test,
        no_test=no_test,
        entry=entry,
        data=_data_facts(config.get("dataset") or {}),
        written_at=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        best_model=best_model,
    )


def measures(recorded_sha256: str | None, recorded_threshold, checkpoint: dict, sha256: str) -> bool:
    """Whether figures recorded of ``recorded_sha256`` (at ``recorded_threshold``) are this checkpoint's.
    Older records name no sha256: only the best.pth a training ends with holds a threshold (an earlier
    epoch's, a last.pth, a stopped run's hold none), and those records were measured at it."""
    if recorded_sha256 is not None:
        return recorded_sha256 == sha256
    threshold = checkpoint.get("threshold")
    return checkpoint.get("kind") != "last" and threshold is not None and recorded_threshold == threshold


def _test_report(checkpoint: dict, sha256: str, run_dir: Path | None, entry: dict, config: dict) -> tuple[dict, str]:
    """The run's test report when it is of this checkpoint (metrics_test.json first, then the registry's
    figures), and a note: why there is none, or that an older report was matched by its threshold."""
    if checkpoint.get("kind") == "last":
        return {}, "Not evaluated (its run's test report is of best.pth, not this latest epoch)"
    found = [report for report in ((_read_json(run_dir / "metrics_test.json") if run_dir else {}),
                                   entry.get("test_metrics") or {}) if report]  # fmt: skip
    for report in found:
        # Whatever its threshold_source says: a fixed-policy run once recorded eval.threshold for its own.
        threshold = report.get("threshold")
        if measures(report.get("checkpoint_sha256"), threshold, checkpoint, sha256):
            if report.get("checkpoint_sha256") is None:
                return report, "matched to this checkpoint by its threshold: the report names no checkpoint sha256"
            return report, ""
    if found:
        other = found[0].get("checkpoint_sha256")
        why = (f"is of another checkpoint, sha256 {other}" if other else "names no checkpoint sha256, and this "
               "checkpoint does not hold the threshold it was measured at")  # fmt: skip
        return {}, f"Not evaluated on this checkpoint (its run's test report {why})"
    return {}, _why_untested(run_dir, entry, config)


def _why_untested(run_dir: Path | None, entry: dict, config: dict) -> str:
    if (config.get("train") or {}).get("do_test") is False:
        return "Not evaluated (train.do_test=false)"
    status = entry.get("status") or (_read_json(run_dir / "status.json").get("status") if run_dir else None)
    if status == "running":  # or killed outright, which leaves status.json as it was
        return "Not evaluated (its run has not finished: its status.json says running)"
    if status == "stopped":
        return "Not evaluated (its run stopped before its test; resume it, which tests it)"
    if status == "failed":
        return "Not evaluated (its run failed before its test)"
    return "Not evaluated (no test report of its run was found)"


def weights_source(path: Path, checkpoint: dict, sha256: str) -> dict:
    """What ``init_from`` loaded, for the new run's checkpoints, registry entry, run.log and card: the
    setting alone (``best``) names a file that each promotion replaces; ``sha256``: of the bytes loaded."""
    return {"checkpoint": str(path), "run_name": checkpoint.get("run_name"), "epoch": checkpoint.get("epoch"),
            "sha256": sha256}  # fmt: skip


def describe_source(source: dict) -> str:
    return (f"{source.get('checkpoint')} (run {source.get('run_name')}, epoch {source.get('epoch')}, "
            f"sha256 {source.get('sha256')})")  # fmt: skip


def _data_facts(dataset: dict) -> dict:
    reader = dataset.get("reader") or {}
    facts = {}
    for split, key in SPLITS.items():
        if dataset.get(key):
            facts[split] = csv_facts(
                Path(dataset[key]), reader.get("path_column", "path"), reader.get("label_column", "label"),
                int(dataset.get("real_label", 1)),
            )  # fmt: skip
    return facts


def csv_facts(csv_path: Path, path_column: str, label_column: str, real_label: int) -> dict:
    """Image counts per class and the sha256 of the CSV as it is now."""
    try:
        frame = read_raw_csv(csv_path)
        require_column(frame, path_column, csv_path, "the dataset's path_column")
        require_column(frame, label_column, csv_path, "the dataset's label_column")
        targets = labels_to_targets(frame, label_column, csv_path, real_label)
    except DataError as err:
        return {"csv": str(csv_path), "error": str(err)}
    return {
        "csv": str(csv_path),
        "images": int(len(targets)),
        "real": int((targets == 0).sum()),
        "fake": int((targets == 1).sum()),
        "sha256": file_sha256(csv_path),
    }


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # a missing source leaves its facts out
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _read_git(path: Path) -> dict:
    """git.txt's ``commit <hash>`` and ``dirty <flag>`` lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    return dict(line.split(" ", 1) for line in lines if " " in line)
