"""What a training run leaves as it ends: the closing fields of its registry entry, its training
curves, and the one line that says how to go on from where it stopped (a run, a sweep's job, an
Optuna trial, a torchrun job)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from deepfake.engine import distributed
from deepfake.engine.trainer import Trainer
from deepfake.evaluation.plots import training_curves_png
from deepfake.tasks import session
from deepfake.tasks.test import TRAINING_CURVES


def how_to_continue(out_dir: Path) -> str:
    """A grid sweep's job goes on when the sweep is relaunched into its dir (a cluster requeues it by
    itself); a single run with resume=. An Optuna trial too: a relaunched search asks its study for
    new trials and never resumes this one, which the study keeps as failed."""
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN and "study_name" not in hydra.sweeper:
        return (f"relaunch the sweep with hydra.sweep.dir={out_dir.parent} (its finished jobs are kept, this one "
                "resumes)")  # fmt: skip
    world = distributed.ranks().world_size
    if world > 1:  # one process would refuse an epoch cut by several, or resume it as another run
        local = os.environ.get("LOCAL_WORLD_SIZE", world)
        how = (f"resume with the same {world} processes: torchrun --nproc_per_node={local} scripts/main.py "
               f"resume={out_dir}")  # fmt: skip
    else:
        how = f"resume with: python scripts/main.py resume={out_dir}"
    if hydra.mode == RunMode.MULTIRUN:
        how += " (a run of its own then: the study keeps this trial failed, and a relaunched search samples new ones)"
    return how


def closing_entry(entry: dict, trainer: Trainer, status: str, test_metrics: dict | None = None) -> dict:
    """``entry`` as the run ends with ``status``: its validation figures, damaged images and test figures."""
    state = trainer.state
    return {
        **entry,
        "status": status,
        "best_val_auc": state.best_auc,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "ended_at": session.now_iso(),
        # The test's own count too (its scorer keeps its own log): all damaged images, as README says.
        "damaged_images": trainer.damaged.counts()
        | ({"test": n} if (n := (test_metrics or {}).get("n_damaged")) else {}),
        "test_metrics": test_metrics,
        "inexact_resume": state.not_exact,  # why a resume could not continue exactly, or None
    }


def write_training_curves(out_dir: Path) -> None:
    """training_curves.png from metrics_log.csv, for readers who never open TensorBoard."""
    with open(out_dir / "metrics_log.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows:
        (out_dir / TRAINING_CURVES).write_bytes(training_curves_png(rows))
