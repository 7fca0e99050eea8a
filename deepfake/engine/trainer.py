"""The training recipe: phases -> epochs -> steps, validation, checkpoints and logs.

Read it top to bottom: ``fit`` walks the phases; ``_setup_phase`` freezes the backbone and builds
the phase's optimizer and schedule; ``_train_epoch`` runs the steps; ``_end_epoch`` validates,
logs and writes ``best.pth`` and ``last.pth`` (:mod:`deepfake.engine.epoch_end`,
:mod:`deepfake.engine.train_state`). Everything it
needs comes in as plain objects; it never sees a config. The training loader comes from
:func:`deepfake.engine.loaders.train_loader`, whose sampler fixes each epoch from (seed, epoch) and
lets a run stopped part-way through an epoch skip what it already trained on. ``last.pth`` holds all
the state needed to continue exactly where it stopped: at an epoch boundary, or part-way through an
epoch when a stop signal asked it to.

Under torchrun (several processes, one per device) the same loop runs on every rank: each rank
trains on its share of every epoch through DistributedDataParallel, scores its share of the
validation set, and the predictions are gathered so every rank computes the same metrics; a stop
signal or a non-finite loss seen by any rank is agreed on by all at the next batch; rank 0 alone
writes files. Checkpoints hold the unwrapped model, so they load with or without DDP.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch.utils.data import DataLoader

from deepfake.data.damaged import DamagedImageLog
from deepfake.engine import distributed
from deepfake.engine.epoch_end import METRICS_FIELDS, EpochEnd
from deepfake.engine.evaluate import Predictions
from deepfake.engine.loaders import shut_down_workers
from deepfake.engine.loss_watch import LossWatch
from deepfake.engine.phases import Phase, steps_per_epoch
from deepfake.engine.precision import autocast, make_grad_scaler
from deepfake.engine.stopping import StopRequest
from deepfake.engine.train_state import Checkpointing, TrainerState
from deepfake.errors import ConfigError, TrainingError
from deepfake.models.param_groups import count_trainable, param_groups, set_backbone_frozen, set_train_mode
from deepfake.tracking.checkpoint_writer import CheckpointWriter
from deepfake.tracking.console import progress_bars
from deepfake.tracking.loggers import MetricsCsv

log = logging.getLogger(__name__)


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing for one logit: 1 -> 1 - smoothing/2, 0 -> smoothing/2, what timm's
    BinaryCrossEntropy(smoothing=...) gives a two-class one-hot target. Training loss only: the
    validation loss stays comparable across settings."""
    return targets if smoothing == 0 else targets * (1.0 - smoothing) + 0.5 * smoothing


def place_model(model: torch.nn.Module, device: torch.device, *, sync_batchnorm: bool,
                channels_last: bool) -> torch.nn.Module:  # fmt: skip
    """``model`` on ``device``, its batch norms synchronised across ranks (``sync_batchnorm``, CUDA
    only), in NHWC memory format (``channels_last``: convolutions run faster so on tensor cores)."""
    model = model.to(device)
    if sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm has no CPU "
                              "kernel); set train.sync_batchnorm=false")  # fmt: skip
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(memory_format=torch.channels_last) if channels_last else model


class Trainer(EpochEnd, Checkpointing):
    def __init__(
        self,
        model: torch.nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader,
        phases: list[Phase],
        *,
        make_optimizer: Callable[[list[dict]], torch.optim.Optimizer],
        make_scheduler: Callable[..., object],
        device: torch.device,
        run_dir: Path,
        describe: dict,
        precision: str = "32",
        accumulate_grad_batches: int = 1,
        grad_clip_norm: float | None = None,
        loggers: Iterable = (),
        resume_strict: bool = False,
        sync_batchnorm: bool = False,
        log_every_n_batches: int = 20,
        channels_last: bool = False,
        compile_model: str | None = None,
        batch_images: Callable[[dict], torch.Tensor] | None = None,
        val_input: Callable[[dict], torch.Tensor] | None = None,
        log_sample_paths: int = 8,
        label_smoothing: float = 0.0,
        ema: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        background_checkpoints: bool = True,
    ) -> None:
        # Settings first: a mistake must not leave a half-begun run dir (metrics_log.csv) behind.
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing={label_smoothing} must be in [0, 1)")
        self.ranks = distributed.ranks()
        self.model = place_model(model, device, sync_batchnorm=sync_batchnorm and self.ranks.distributed,
                                 channels_last=channels_last)  # fmt: skip
        self.channels_last = channels_last  # inputs follow the model's memory format in _train_batch
        self.train_model: torch.nn.Module = self.model  # the DDP wrapper while distributed
        # An exponential moving average of the weights (timm's ModelEmaV3, train.ema): what is validated
        # and saved as best.pth; the raw weights go on training and are saved in last.pth beside it.
        self.ema = ema(self.model) if ema is not None else None
        self.step_lrs: dict[str, float] = {}  # the rates the last optimizer step was taken with (lr/* logs them)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.phases = phases
        self.make_optimizer, self.make_scheduler = make_optimizer, make_scheduler
        self.device, self.precision = device, precision
        self.accumulate = max(1, int(accumulate_grad_batches))
        self.grad_clip_norm = grad_clip_norm
        self.resume_strict = resume_strict  # refuse a last.pth whose optimizer state cannot be loaded
        self.run_dir = Path(run_dir)
        self.describe = describe  # model_spec, preprocess, labels, run_name: makes best.pth self-describing
        # Rank 0 alone writes: metrics_log.csv, TensorBoard, checkpoints.
        self.loggers = list(loggers) if self.ranks.is_main else []
        self.metrics_csv = MetricsCsv(self.run_dir / "metrics_log.csv", METRICS_FIELDS) if self.ranks.is_main else None
        # best.pth and last.pth are copied, then written on a thread while training goes on
        # (train.background_checkpoints); fit returns once they are on disk.
        self.checkpoints = CheckpointWriter(background=background_checkpoints)
        self.state = TrainerState()
        self.damaged = DamagedImageLog()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.scaler = make_grad_scaler(device, precision)
        self._resume_from: dict | None = None
        self.log_every = max(1, int(log_every_n_batches))
        self.compile_model = compile_model
        # Make a training / validation batch into model input on the device (uint8 images normalised
        # there; JPEGs decoded there with dataset.decode=cuda); None: the batch's images are the input.
        self.batch_images, self.val_input = batch_images, val_input
        self.log_sample_paths = max(0, int(log_sample_paths))
        self.label_smoothing = float(label_smoothing)
        self.losses = LossWatch(device)
        self.stop = StopRequest()
        self.stopped_early = False  # fit returned because of a stop signal; last.pth holds where
        # Validation's predictions by the weights best.pth holds, when this process scored them: the
        # operating point is chosen on them instead of scoring validation once more.
        self.best_predictions: Predictions | None = None

    def close(self) -> None:
        """Flush and close metrics_log.csv; stop the checkpoint writer. The trackers stay open: they
        belong to the task that made them, which logs the test of best.pth to the same tracker runs
        after training."""
        if self.metrics_csv is not None:
            self.metrics_csv.close()
        self.checkpoints.close()
        shut_down_workers(self.train_loader)  # the epochs' persistent workers end with the training

    # ----------------------------------------------------------------------------------- fit
    def fit(self, resume: dict | None = None) -> TrainerState:
        """Run every remaining phase; ``resume`` is a loaded ``last.pth``.

        While it runs, a stop signal (SIGINT/SIGTERM/SIGUSR2) makes it finish the current batch (or
        accumulation window), save ``last.pth`` and return early with ``stopped_early`` set. It
        returns once the checkpoints it saved are on disk.
        """
        try:
            state = self._fit(resume)
        except BaseException:
            self.checkpoints.drain()  # a failed write must not hide the error on its way out
            raise
        self.checkpoints.wait()
        return state

    def _fit(self, resume: dict | None) -> TrainerState:
        if resume is not None:
            self._restore(resume)
            for logger in self.loggers:
                logger.resumed_at(self.state.step)
        if self.metrics_csv is not None:
            # Rows past the restored epoch were logged by the killed process after its last save; the
            # resumed run logs those epochs again.
            self.metrics_csv.drop_rows_after("epoch", self.state.epoch)
        total_epochs = sum(phase.epochs for phase in self.phases)
        with self.stop.listening(), self._progress() as progress:
            epochs_bar = progress.add_task("epochs", total=total_epochs, completed=self.state.epoch, status="")
            for phase_index in range(self.state.phase_index, len(self.phases)):
                phase = self.phases[phase_index]
                self._setup_phase(phase)
                # _end_epoch moves state.phase_index on after the phase's last epoch.
                while self.state.phase_index == phase_index:
                    if self._agree_on_stop():  # at an epoch boundary: last.pth is already up to date
                        self.stopped_early = True
                        return self.state
                    started = time.perf_counter()
                    if self.state.batches_done == 0:
                        self.state.epoch_lrs = self._learning_rates()
                    if not self._train_epoch(phase, progress):
                        self.stopped_early = True
                        return self.state
                    row = self._end_epoch(phase, time.perf_counter() - started, progress)
                    progress.update(epochs_bar, advance=1, status=f"val_auc {row['val_auc']}")
            # A signal in the last epoch's last batches or validation, which no epoch boundary follows:
            # still a stop (under submitit a requeue), not a run that goes on to test and register.
            self.stopped_early = self._agree_on_stop()
        # Each rank loaded its own share of the training images: the counts cover them all.
        self.damaged.merge(distributed.all_gather_objects(self.damaged.seen))
        return self.state

    def _agree_on_stop(self) -> bool:
        """Whether a stop signal reached any rank; every rank then takes it as its own, so all ranks
        stop after the same batch instead of leaving the others waiting in the next collective.
        A CPU collective: no wait for the GPU."""
        (signum,) = distributed.agree_max(self.stop.signum or 0)
        if signum and not self.stop.requested:
            self.stop.signum = signum
        # The agreed answer, not this rank's flag: a signal that lands just after the collective would
        # stop this rank alone, and leave the others waiting for it in their next one.
        return bool(signum)

    # ------------------------------------------------------------------------------- phases
    def _setup_phase(self, phase: Phase) -> None:
        set_backbone_frozen(self.model, phase.backbone_frozen)
        # DDP registers the parameters that train when it wraps the model: a new phase, a new wrapper.
        self.train_model = self._wrap(self.model)
        if self.compile_model:  # compiled again per phase (a backend name): the frozen parameters differ
            self.train_model = torch.compile(self.train_model, backend=self.compile_model)
        self.train_loader.sampler.skip(0)
        per_epoch = steps_per_epoch(len(self.train_loader), self.accumulate)
        self._build_optimizer(phase, per_epoch)
        self.phase_step = self.state.epoch_in_phase * per_epoch + steps_per_epoch(
            self.state.batches_done, self.accumulate
        )
        if self._resume_from is not None and self._resume_from.get("optimizer") is not None:
            # Only a run stopped inside this phase has optimizer state for it; a new phase starts fresh.
            self._load_optimizer_state(phase, per_epoch)
        self._resume_from = None
        if self.scheduler is not None:
            self.scheduler.step_update(self.phase_step)
        log.info(
            "phase %s: %d epoch(s), %s trainable parameters, lr_head=%g lr_backbone=%g",
            phase.name, phase.epochs, f"{count_trainable(self.model):,}", phase.lr_head, phase.lr_backbone,
        )  # fmt: skip

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.ranks.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _build_optimizer(self, phase: Phase, per_epoch: int) -> None:
        groups = param_groups(
            self.model, phase.lr_backbone, phase.lr_head, phase.backbone_frozen,
            weight_decay_exclude_1d=phase.weight_decay_exclude_1d, layer_decay=phase.layer_decay,
        )  # fmt: skip
        self.optimizer = self.make_optimizer(groups)
        self.scheduler = None
        if phase.scheduled:
            warmup = round(phase.warmup_epochs * per_epoch)
            self.scheduler = self.make_scheduler(
                self.optimizer, t_initial=max(1, phase.epochs * per_epoch - warmup), warmup_t=warmup
            )

    # -------------------------------------------------------------------------------- steps
    def _train_epoch(self, phase: Phase, progress: Progress) -> bool:
        """Train the epoch, or its rest after a mid-epoch resume; False when a stop signal ended it."""
        set_train_mode(self.model, phase.backbone_frozen)
        loader, sampler = self.train_loader, self.train_loader.sampler
        # The data order and each sample's augmentation depend only on (seed, epoch), so a resumed
        # run sees the same batches.
        sampler.set_epoch(self.state.epoch)
        n_batches = len(loader)
        done = self.state.batches_done
        # A resumed epoch skips the samples already trained on without loading them.
        sampler.skip(min(done * loader.batch_size, sampler.per_rank))
        batches_bar = progress.add_task(
            f"{phase.name} epoch {self.state.epoch + 1}", total=n_batches, completed=done, status=""
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.start(self.state.epoch_loss_sum)
        try:
            for i, batch in enumerate(loader, start=done):
                if i == done:
                    self._log_samples("training", loader.dataset, batch["index"].tolist())
                stop = self._train_batch(batch, i, n_batches)
                if stop or (i + 1) % self.log_every == 0 or i + 1 == n_batches:
                    self._read_losses()  # the host waits for the device here, not on every step
                    self.checkpoints.check()  # a background write that failed ends the run now
                    progress.update(batches_bar, completed=i + 1, status=f"loss {self._epoch_loss():.4f}")
                    if (i + 1) % self.log_every == 0 or i + 1 == n_batches:  # a stop between two: last.pth
                        self._log_interval()  # keeps where the interval began, and the resume logs it whole
                if stop:
                    self._save_last(phase, val_metrics=None)
                    return False
        finally:
            sampler.skip(0)
            progress.remove_task(batches_bar)
        return True

    def _train_batch(self, batch: dict, i: int, n_batches: int) -> bool:
        """Forward, backward and (at the end of an accumulation window) the optimizer step of batch
        ``i``; True when training must stop after it (a stop signal, at a window's end)."""
        if self.batch_images is not None:
            images = self.batch_images(batch)
        else:
            images = batch["image"].to(self.device, non_blocking=True)
        targets = batch["target"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        window_ends = (i + 1) % self.accumulate == 0 or i + 1 == n_batches
        # Gradients are averaged over the ranks once per optimizer step, not once per micro-batch.
        no_sync = self.train_model.no_sync if self.ranks.distributed and not window_ends else contextlib.nullcontext
        with no_sync():
            with autocast(self.device, self.precision):
                logits = self.train_model(images).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits.float(), smooth_targets(targets, self.label_smoothing))
            self.losses.add(loss, i, len(targets))
            self.scaler.scale(loss / self.accumulate).backward()
        if window_ends:
            self._optimizer_step()
        if batch["damaged"].any():
            self.damaged.record("train", self.train_loader.dataset, batch["index"][batch["damaged"]].tolist())
        self.state.batches_done = i + 1
        self.state.epoch_samples += len(targets)
        stop = self._agree_on_stop() if self.ranks.distributed else self.stop.requested
        # Stop only after an optimizer step: gradients half-accumulated over a window are not saved.
        return stop and (i + 1) % self.accumulate == 0 and i + 1 < n_batches

    def _read_losses(self) -> None:
        """The epoch's loss so far into the state; a non-finite loss on any rank ends training on
        every rank (they all read at the same batches) before anything is saved."""
        reading = self.losses.read()
        self.state.epoch_loss_sum = reading.loss_sum
        (failed,) = distributed.agree_max(int(reading.first_bad_batch is not None))
        if failed:
            where = "on another rank" if reading.first_bad_batch is None else f"batch {reading.first_bad_batch + 1}"
            value = "" if reading.first_bad_value is None else f" ({reading.first_bad_value})"
            raise self._non_finite(f"training loss{value} at epoch {self.state.epoch + 1}, {where}")

    def _non_finite(self, what: str) -> TrainingError:
        """The error that ends training on a non-finite ``what``, once the last good state is on disk."""
        self.checkpoints.drain()  # the last good state may still be on its way to the disk
        kept = "last.pth is the last good state" if (self.run_dir / "last.pth").is_file() else "nothing saved"
        return TrainingError(
            f"non-finite {what}; lower phase.lr_head/phase.lr_backbone or use train.precision=32 ({kept})"
        )

    def _epoch_loss(self) -> float:
        return self.state.epoch_loss_sum / max(self.state.epoch_samples, 1)

    def _optimizer_step(self) -> None:
        if self.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.phase_step += 1
        if self.loggers:  # read before the schedule moves them on to the next step's; only lr/* needs them
            self.step_lrs = self._part_lrs()
        if self.scheduler is not None:
            self.scheduler.step_update(self.phase_step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.step)

    # ------------------------------------------------------------------------------ display
    def _progress(self) -> Progress:
        return progress_bars()
