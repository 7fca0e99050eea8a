"""task=audit (and train.audit=true): is the configured dataset cheatable before a GPU-day is spent?

Reads the dataset's train/valid/test CSVs with the dataset's own reader, runs every check of
deepfake.audit (conf/audit/), writes audit.json and audit.html into ``out_dir`` and prints a verdict
per check. A failing check is a warning, or with audit.strict=true a one-line error (exit 2).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.table import Table
from rich.text import Text

from deepfake.data.manifest import read_manifest
from deepfake.errors import ConfigError, DataError
from deepfake.tasks import data_setup, session, values
from deepfake.tracking.console import console, progress_bars

log = logging.getLogger(__name__)

# Earliest first: leakage is a later split's image found in an earlier one.
SPLIT_KEYS = (("train", "train_csv"), ("valid", "val_csv"), ("test", "test_csv"))
_STYLE = {"pass": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


class AuditFailed(DataError):
    """audit.strict=true and a check failed."""


def run(cfg: DictConfig) -> float | None:
    report = audit_dataset(cfg, session.run_dir())
    return report["shortcuts"]["groups"]["all features"]["auc"]


def audit_dataset(cfg: DictConfig, out_dir: Path) -> dict:
    """Audit ``cfg.dataset`` into ``out_dir``; raises AuditFailed when strict and a check fails."""
    try:
        from deepfake.audit.pipeline import Split, failed_checks, run_audit
    except ImportError as err:
        raise ConfigError(f"the dataset audit needs {err.name}: pip install -e '.[audit]'") from None
    values.flag(cfg.audit.strict, "audit.strict")  # text (strict=nope) would count as strict
    settings = instantiate(cfg.audit)
    data_setup.ensure_dataset(cfg.dataset)
    splits = [
        Split(name, Path(cfg.dataset[key]), data_setup.make_split(cfg.dataset, key, transform=None).read_frame(), key)
        for name, key in SPLIT_KEYS
        if cfg.dataset.get(key)
    ]
    total = sum(len(split.frame) for split in splits)
    log.info("auditing %s: %s", cfg.dataset.name, ", ".join(f"{len(s.frame)} {s.name}" for s in splits))
    with progress_bars() as progress:
        reading = progress.add_task(
            "audit: reading images", total=len({p for s in splits for p in s.frame["path"]}), status=""
        )
        report = run_audit(
            splits, settings, out_dir, title=str(cfg.dataset.name), known_sha256=_manifest_digests(cfg.dataset),
            progress=lambda n: progress.advance(reading, n),
        )  # fmt: skip
    log.info("audited %d images in %.1f s: %s (%s)", total, report["seconds"]["total"], report["verdict"].upper(),
             out_dir / "audit.html")  # fmt: skip
    print_audit_summary(report)
    if "clean_csvs" in report["leakage"]:
        log.info("audit: de-leaked CSVs in %s; train on them with %s", out_dir / "clean",
                 report["leakage"]["clean_overrides"])  # fmt: skip
    failed = failed_checks(report)
    if failed and settings.strict:
        raise AuditFailed(
            f"dataset audit failed ({', '.join(failed)}): see {out_dir / 'audit.html'}; fix the dataset "
            "(audit.write_clean_csvs=true writes de-leaked CSVs) or set audit.strict=false"
        )
    for check in failed:
        log.warning("audit: %s failed: %s", check, report[check]["verdict"].message)
    return report


def _manifest_digests(dataset_cfg: DictConfig) -> dict[str, str]:
    """sha256 per absolute image path from the dataset's manifest, when it has one (no hashing then)."""
    manifest = dataset_cfg.get("manifest")
    if not manifest or not Path(manifest).is_file():
        return {}
    root = os.path.abspath(dataset_cfg.root_dir)
    digests = read_manifest(manifest)
    log.info("audit: exact duplicates from the sha256 in %s", manifest)
    # Keyed as the reader resolves CSV paths, so the lookups match.
    return {os.path.normpath(os.path.join(root, relative)): digest for relative, digest in digests.items()}


def print_audit_summary(report: dict) -> None:
    from deepfake.audit.pipeline import CHECKS

    table = Table(title=f"audit of {report['title']}: {report['verdict'].upper()}", title_justify="left")
    table.add_column("check", style="bold")
    table.add_column("verdict")
    table.add_column("why", overflow="fold")
    for check in CHECKS:
        verdict = report[check]["verdict"]
        # Text, not markup: messages hold paths and brackets from the data.
        table.add_row(check, Text(verdict.level.upper(), style=_STYLE[verdict.level]), Text(verdict.message))
    groups = report["shortcuts"]["groups"]
    shortcut_aucs = ", ".join(f"{group} {r['auc']:.3f}" for group, r in groups.items() if r["auc"] is not None)
    shortcut_aucs = shortcut_aucs or "not measured"
    table.add_row("", "", Text(f"shortcut AUC per feature group: {shortcut_aucs}"))
    counts = report["leakage"]["counts"]
    table.add_row("", "", Text("leaked images: " + ", ".join(
        f"{c['earlier']}->{c['later']} {c['exact']} exact + {c['near']} near" for c in counts)))  # fmt: skip
    table.add_row("reports", "", Text(f"{report['files']['html']}, {report['files']['json']}"))
    console.print(table, soft_wrap=True)
