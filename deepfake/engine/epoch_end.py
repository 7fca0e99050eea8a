"""What the trainer does as epochs go: validation (of the moving average when there is one), the
epoch's row in metrics_log.csv, best.pth and last.pth, and what the trackers and run.log get, also
between epochs (the training loss every log interval, the first images of each epoch's batches).

A mixin of :class:`deepfake.engine.trainer.Trainer`, like
:class:`deepfake.engine.train_state.Checkpointing`: its methods read and set the trainer's attributes.
"""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np
import torch
from rich.progress import Progress

from deepfake.engine import distributed
from deepfake.engine.evaluate import Predictions, gather_predictions, predict
from deepfake.engine.metrics import auc_or_none
from deepfake.engine.phases import Phase

log = logging.getLogger(__name__)

# val_accuracy in metrics_log.csv is at p(fake) 0.5: the operating point is chosen on validation
# only once training has picked best.pth (tasks/train.py), so no other threshold exists yet.
VAL_ACCURACY_THRESHOLD = 0.5
METRICS_FIELDS = [
    "phase", "epoch", "step", "lr_backbone", "lr_head",
    "train_loss", "val_loss", "val_auc", "val_accuracy", "seconds",
]  # fmt: skip


class EpochEnd:
    """The Trainer's validation and records (a mixin)."""

    def _log_samples(self, what: str, dataset, indices: list[int]) -> None:
        """The first images of an epoch's first batch in run.log: enough to reproduce the run's input
        order, or to find the image that broke it."""
        paths = getattr(dataset, "paths", None)
        if self.log_sample_paths and paths is not None:
            shown = [paths[index] for index in indices[: self.log_sample_paths]]
            log.info("epoch %d, first %s batch starts with: %s", self.state.epoch + 1, what, ", ".join(shown))

    def _log_interval(self) -> None:
        """``train/loss`` over the batches since the last call (this rank's), and the learning rates the
        logged step was taken with, once
        per optimizer step: mid accumulation window (train.log_every_n_batches below it) the interval
        goes on to the window's step instead of logging its step again."""
        state = self.state
        if state.step == state.logged_step:
            return
        if state.epoch_samples > state.logged_samples and self.loggers:
            interval_loss = (state.epoch_loss_sum - state.logged_loss_sum) / (
                state.epoch_samples - state.logged_samples
            )
            metrics = {"train/loss": interval_loss, **{f"lr/{part}": lr for part, lr in self.step_lrs.items()}}
            for logger in self.loggers:
                logger.log_metrics(metrics, step=state.step)
        state.logged_step, state.logged_loss_sum, state.logged_samples = (
            state.step, state.epoch_loss_sum, state.epoch_samples)  # fmt: skip

    def _part_lrs(self) -> dict[str, float]:
        """The backbone's and the head's base learning rate now, as metrics_log.csv has them (before
        layer decay scales them); 0 for a frozen backbone."""
        lrs = self._learning_rates()
        return {"backbone": lrs.get("backbone", 0.0), "head": lrs["head"]}

    def scored_model(self) -> torch.nn.Module:
        """The weights validation judges and best.pth keeps: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self, progress: Progress | None = None) -> Predictions:
        """p(fake) of every validation image; under DDP each rank scores its shard and every rank
        gets all of them back in dataset order, so each computes the same metrics."""
        distributed.broadcast_buffers(self.scored_model())  # every rank scores with the weights rank 0 saves
        # Validation runs in a fixed order: its first batch is the sampler's first indices (this rank's).
        sampler = self.val_loader.sampler
        first = list(itertools.islice(iter(sampler), self.val_loader.batch_size))
        self._log_samples("validation", self.val_loader.dataset, first)
        bar = progress.add_task("validate", total=len(self.val_loader), status="") if progress else None
        preds = predict(
            self.scored_model(), self.val_loader, self.device, self.precision,
            on_batch=(lambda: progress.update(bar, advance=1)) if progress else None, to_input=self.val_input,
        )  # fmt: skip
        if progress:
            progress.remove_task(bar)
        preds = gather_predictions(preds)
        self.damaged.record("valid", self.val_loader.dataset, preds.damaged)
        return preds

    def _learning_rates(self) -> dict[str, float]:
        """Per param group, as the epoch starts (the schedule moves them every step); "backbone" and
        "head" are each part's base rate, before layer decay scales it."""
        lrs = {group["name"]: group["lr"] for group in self.optimizer.param_groups}
        for group in self.optimizer.param_groups:
            lrs.setdefault(group["name"].split("_")[0], group["lr"] / group.get("lr_scale", 1.0))
        return lrs

    def _end_epoch(self, phase: Phase, train_seconds: float, progress: Progress) -> dict:
        """Validate, write the epoch's row, best.pth when it improved and last.pth; tell the trackers."""
        started = time.perf_counter()
        preds = self.validate(progress)
        if not np.isfinite(preds.logits).all():  # every rank holds all of them: all stop here
            bad = int((~np.isfinite(preds.logits)).sum())
            raise self._non_finite(f"validation scores ({bad} of {len(preds.logits)}) at epoch {self.state.epoch + 1}")
        auc = auc_or_none(preds.targets, preds.logits)  # the logits: p(fake) ties its saturated scores
        validation_s = time.perf_counter() - started
        row = self._epoch_row(phase, preds, auc, train_seconds + validation_s)
        improved = self.state.best_epoch is None or (
            auc is not None and (self.state.best_auc is None or auc > self.state.best_auc)
        )
        val_metrics = {k: row[k] for k in ("val_loss", "val_auc", "val_accuracy")}
        if improved:
            self.state.best_auc, self.state.best_epoch = auc, self.state.epoch
            self.best_predictions = preds
        if self.state.epoch_in_phase >= phase.epochs:
            self.state.phase_index += 1
            self.state.epoch_in_phase = 0
        # The row reaches the disk before last.pth: a kill in between leaves an extra row, which the
        # resumed run drops and logs again, never a missing one.
        if self.metrics_csv is not None:
            self.metrics_csv.append(row)
        self._save_last(phase, val_metrics)
        # best.pth after last.pth, which names this epoch the best and holds its weights: a kill in between
        # leaves a best.pth one improvement behind, which the resume writes again from last.pth
        # (_reconcile_best), never one that no record describes.
        if improved and self.ranks.is_main:
            self.checkpoints.save(self._checkpoint("best", phase, val_metrics), self.run_dir / "best.pth")
        self._report_epoch(row, improved, validation_s)
        return row

    def _epoch_row(self, phase: Phase, preds: Predictions, auc: float | None, seconds: float) -> dict:
        """The epoch's metrics_log.csv row; the state moves on to the next epoch."""
        accuracy = float(((preds.probs >= VAL_ACCURACY_THRESHOLD) == preds.targets.astype(bool)).mean())
        lrs = self.state.epoch_lrs
        loss_sum, samples = distributed.all_reduce_sum(self.state.epoch_loss_sum, self.state.epoch_samples)
        self.state.epoch += 1
        self.state.epoch_in_phase += 1
        self.state.phase_epochs[phase.name] = self.state.phase_epochs.get(phase.name, 0) + 1
        self.state.batches_done, self.state.epoch_loss_sum, self.state.epoch_samples = 0, 0.0, 0
        self.state.logged_loss_sum, self.state.logged_samples = 0.0, 0
        self.state.epoch_lrs = None
        return {
            "phase": phase.name,
            "epoch": self.state.epoch,
            "step": self.state.step,
            "lr_backbone": lrs.get("backbone", 0.0),
            "lr_head": lrs["head"],
            "train_loss": round(loss_sum / max(samples, 1), 6),
            "val_loss": round(preds.loss(), 6),
            "val_auc": None if auc is None else round(auc, 6),
            "val_accuracy": round(accuracy, 6),
            "seconds": round(seconds, 2),
        }

    def _report_epoch(self, row: dict, improved: bool, validation_s: float) -> None:
        """The epoch to the trackers (under grouped names, at the global step) and to run.log."""
        tracked = {"epoch": row["epoch"], "train/epoch_loss": row["train_loss"], "val/loss": row["val_loss"],
                   "val/auc": row["val_auc"], "val/accuracy": row["val_accuracy"], "time/epoch_s": row["seconds"],
                   "time/validation_s": round(validation_s, 3)}  # fmt: skip
        for logger in self.loggers:
            logger.log_metrics({k: v for k, v in tracked.items() if v is not None}, step=self.state.step)
        log.info(
            "epoch %d [%s] train_loss=%.4f val_loss=%.4f val_auc=%s val_acc=%.4f lr_backbone=%.3g lr_head=%.3g "
            "%.1fs%s",
            row["epoch"], row["phase"], row["train_loss"], row["val_loss"], row["val_auc"], row["val_accuracy"],
            row["lr_backbone"], row["lr_head"], row["seconds"], " (best)" if improved else "",
        )  # fmt: skip
