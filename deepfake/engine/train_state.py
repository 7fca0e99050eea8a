"""What the trainer saves and restores: its state, ``best.pth``, ``last.pth`` and the resume from it.

``last.pth`` holds everything needed to continue exactly: the model, the phase's optimizer, schedule
and grad scaler, :class:`TrainerState`, the RNG states, where the loader stands, and under DDP each
rank's own RNG state and partial loss. Rank 0 writes; every rank reads it back on a resume.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deepfake.engine import distributed
from deepfake.engine.phases import PHASE_ORDER, Phase
from deepfake.engine.precision import make_grad_scaler
from deepfake.engine.reproducibility import capture_rng_state, restore_rng_state
from deepfake.errors import CheckpointError, ConfigError
from deepfake.tracking.checkpoint import CHECKPOINT_FORMAT, load_checkpoint

log = logging.getLogger(__name__)

# What last.pth holds beyond what best.pth does: the state that only a resume needs.
LAST_ONLY = ("trainer_state", "optimizer", "scheduler", "scaler", "rng", "loader", "ranks", "damaged", "ema_model")


def best_from_last(last: dict) -> dict:
    """The best.pth that was saved with ``last``, a last.pth saved at the end of that epoch: what
    validation scored (the moving average under train.ema) and the same description."""
    kept = {key: value for key, value in last.items() if key not in LAST_ONLY}
    return {**kept, "kind": "best", "model": last["ema_model"] if last.get("ema") else last["model"]}


def _epoch_of(checkpoint: Path) -> int | None:
    """The epoch a checkpoint was saved at; None when there is none to read. Its tensors are mapped,
    not read: every rank asks this on every resume, of a best.pth that may be gigabytes."""
    try:
        return load_checkpoint(checkpoint, mmap=True).get("epoch")
    except CheckpointError:
        return None


@dataclass
class TrainerState:
    """Where training stands; saved in ``last.pth`` so a resumed run continues from here."""

    phase_index: int = 0
    epoch_in_phase: int = 0  # completed epochs of the current phase
    epoch: int = 0  # completed epochs over all phases
    step: int = 0  # optimizer steps over all phases
    best_auc: float | None = None
    best_epoch: int | None = None
    # The epoch in progress: batches trained, their summed loss and count, the lrs it started with.
    # Non-zero in a last.pth only when a stop signal ended the epoch part-way.
    batches_done: int = 0
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    epoch_lrs: dict | None = None
    # The last train/loss point: its optimizer step, and the epoch's loss sum and samples then. Saved
    # so that a run stopped between two points logs, once resumed, the very points of a run never
    # stopped (the next one over the same batches), not one at the stop and one over the rest.
    logged_step: int = 0
    logged_loss_sum: float = 0.0
    logged_samples: int = 0
    # Why the run is no longer an exact continuation of itself (a resume without optimizer state), or None.
    not_exact: str | None = None
    # Completed epochs per phase name: what an ended phase trained, which its epoch_in_phase (0 once it
    # ended) no longer says. Absent from a last.pth of an older version.
    phase_epochs: dict = field(default_factory=dict)


class Checkpointing:
    """The Trainer's checkpoint methods (a mixin: they read and set the trainer's own attributes)."""

    def _load_optimizer_state(self, phase: Phase, per_epoch: int) -> None:
        """The stopped phase's optimizer state. State that cannot be loaded (another torch version, param
        groups that changed) gives a fresh optimizer and scaler and a run that is no longer exact,
        unless ``resume_strict``."""
        saved = self._resume_from
        try:
            # The moments resume; the settings stay this run's (lr, weight decay: later overrides win).
            # The schedule is not loaded either: _setup_phase re-derives it from the step, for this run's
            # epochs and batch size, where the stopped run's scheduler state would impose its own.
            settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
            self.optimizer.load_state_dict(saved["optimizer"])
            for group, own in zip(self.optimizer.param_groups, settings):
                group.update(own)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            cause = f"the optimizer state of {self.run_dir / 'last.pth'} cannot be loaded ({reason})"
            if self.resume_strict:
                raise CheckpointError(
                    f"{cause}; resume_strict=true refuses to go on without it (resume_strict=false continues from "
                    "the model weights with a fresh optimizer, no longer exactly)"
                ) from err
            log.warning("%s: continuing from the model weights with a fresh optimizer; the run is no longer an "
                        "exact continuation", cause)  # fmt: skip
            self.state.not_exact = cause
            self._build_optimizer(phase, per_epoch)
            self.scaler = make_grad_scaler(self.device, self.precision)

    # -------------------------------------------------------------------------- checkpoints
    def _checkpoint(self, kind: str, phase: Phase, val_metrics: dict | None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": kind,
            "model": (self.scored_model() if kind == "best" else self.model).state_dict(),
            "ema": self.ema is not None,  # best.pth's weights are the moving average
            **self.describe,
            "epoch": self.state.epoch,
            "phase": phase.name,
            "val_metrics": val_metrics,  # None in a last.pth saved part-way through an epoch
        }

    def _save_last(self, phase: Phase, val_metrics: dict | None) -> None:
        """last.pth, saved by rank 0 with every rank's own state (written in the background: fit returns
        once it is on disk); no rank goes on before rank 0 has taken its copy."""
        ranks_state = distributed.all_gather_objects(self._rank_state()) if self.ranks.distributed else None
        if self.ranks.is_main:
            self.checkpoints.save(self._last_checkpoint(phase, val_metrics, ranks_state), self.run_dir / "last.pth")
        distributed.barrier()

    def _rank_state(self) -> dict:
        """What differs between ranks: RNG streams (dropout) and the epoch's partial loss."""
        return {
            "rng": capture_rng_state(),
            "epoch_loss_sum": self.state.epoch_loss_sum,
            "epoch_samples": self.state.epoch_samples,
            "damaged": self.damaged.saved(),  # the images this rank loaded
        }

    def _last_checkpoint(self, phase: Phase, val_metrics: dict | None, ranks_state: list[dict] | None) -> dict:
        phase_finished = self.state.epoch_in_phase == 0 and self.state.batches_done == 0
        return {
            **self._checkpoint("last", phase, val_metrics),
            "trainer_state": asdict(self.state),
            # A finished phase's optimizer is never needed again: the next phase builds its own.
            "optimizer": None if phase_finished else self.optimizer.state_dict(),
            "scheduler": None if phase_finished or self.scheduler is None else self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            # Where the loader stands: a resume skips this many samples of each rank's share.
            "loader": {
                "epoch": self.state.epoch,
                "samples_done_per_rank": self.state.batches_done * self.train_loader.batch_size,
                "batch_size": self.train_loader.batch_size,
                "world_size": self.ranks.world_size,
                "accumulate": self.accumulate,
                "seed": self.train_loader.sampler.seed,  # with the epoch, the order of its images
            },
            "ranks": ranks_state,  # under DDP: each rank's _rank_state, in rank order
            # Each rank's, taken out of its state above so that last.pth holds them once.
            "damaged": [own.pop("damaged") for own in ranks_state] if ranks_state else [self.damaged.saved()],
            "ema_model": None if self.ema is None else self.ema.module.state_dict(),
        }

    def check_resumable(self, checkpoint: dict) -> tuple[TrainerState, dict]:
        """Refuse a last.pth this run cannot continue: weights of another model, no moving average for
        train.ema, an epoch stopped part-way under another batch size or number of processes, a schedule
        that cannot hold what was trained. The task asks before the first batch (a refusal then puts the
        run's own overrides back); ``_restore`` asks again and resumes from the answer: the saved state
        placed in this run's schedule, and the checkpoint to resume from (``_place_in_schedule``)."""
        last = self.run_dir / "last.pth"
        try:
            self.model.load_state_dict(checkpoint["model"])  # the weights it resumes from anyway
        except RuntimeError as err:
            raise CheckpointError(f"{last} does not fit this model ({str(err).splitlines()[0]}); resume with the "
                                  "run's own backbone settings") from err  # fmt: skip
        if self.ema is not None and checkpoint.get("ema_model") is None:
            raise CheckpointError(f"{last} holds no moving average of the weights; resume it with the run's own "
                                  "train.ema.enabled=false")  # fmt: skip
        state, saved = TrainerState(**checkpoint["trainer_state"]), self._saved_loader(checkpoint)
        if "phase_epochs" not in checkpoint["trainer_state"] and state.epoch_in_phase:  # an older last.pth
            state.phase_epochs = {checkpoint.get("phase"): state.epoch_in_phase}  # the stopped phase's, so far
        if "logged_step" not in checkpoint["trainer_state"]:  # an older last.pth logged a point at its stop
            state.logged_step, state.logged_loss_sum, state.logged_samples = (
                state.step, state.epoch_loss_sum, state.epoch_samples)  # fmt: skip
        if state.batches_done:
            self._refuse_recutting_the_epoch(saved)
        return state, self._place_in_schedule(checkpoint, state)

    def _refuse_recutting_the_epoch(self, saved: dict) -> None:
        """An epoch stopped part-way goes on only as it was cut: its rest skips the samples trained,
        counted in batches of the saved size and taken from the saved seed's order."""
        last = self.run_dir / "last.pth"
        now = (self.ranks.world_size, self.train_loader.batch_size, self.accumulate)
        then = (saved["world_size"], saved["batch_size"], saved.get("accumulate", self.accumulate))  # older: unsaid
        if then != now:
            # Another accumulation window would cut the epoch's steps elsewhere: not the schedule it stopped in.
            raise CheckpointError(
                f"{last} was saved part-way through an epoch by {then[0]} process(es) with dataset.batch_size="
                f"{then[1]} and train.accumulate_grad_batches={then[2]}; resume it with the same (now {now[0]} with "
                f"{now[1]} and {now[2]})"
            )
        seed = saved.get("seed", self.train_loader.sampler.seed)  # older: unsaid
        if seed != self.train_loader.sampler.seed:
            raise CheckpointError(
                f"{last} was saved part-way through an epoch with seed={seed}, whose order the rest of the epoch "
                f"follows; resume it with seed={seed} (now {self.train_loader.sampler.seed})"
            )

    def _saved_loader(self, checkpoint: dict) -> dict:
        return checkpoint.get("loader") or {"world_size": 1, "batch_size": self.train_loader.batch_size}

    def _restore(self, checkpoint: dict) -> None:
        self.state, checkpoint = self.check_resumable(checkpoint)  # loads the model's weights too
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint["ema_model"])
        # Here, not with the optimizer: a run stopped at a phase boundary has no optimizer state to load,
        # but its loss scale goes on into the next phase. Empty when saved without fp16's scaler.
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.damaged.merge(checkpoint.get("damaged") or [])  # every rank's: the counts are merged at the end
        saved = self._saved_loader(checkpoint)
        same_world = saved["world_size"] == self.ranks.world_size
        ranks_state = checkpoint.get("ranks")
        if ranks_state and same_world:
            own = ranks_state[self.ranks.rank]
            self.state.epoch_loss_sum, self.state.epoch_samples = own["epoch_loss_sum"], own["epoch_samples"]
            restore_rng_state(own["rng"])
        else:
            restore_rng_state(checkpoint["rng"])
        if not same_world:
            self._continue_inexactly(f"trained on {saved['world_size']} process(es), resumed on "
                                     f"{self.ranks.world_size}: another global batch and data split")  # fmt: skip
        seed, now = saved.get("seed"), self.train_loader.sampler.seed  # None: an older last.pth did not say
        if seed is not None and seed != now and self.state.phase_index < len(self.phases):  # epochs are left
            self._continue_inexactly(f"trained with seed={seed}, resumed with seed={now}: the epochs left see "
                                     "their images in another order, with other augmentations")  # fmt: skip
        self._reconcile_best(checkpoint)
        self._resume_from = checkpoint

    def _continue_inexactly(self, why: str) -> None:
        """Go on, recording (for the registry's inexact_resume) that the run is not exactly itself any more."""
        self.state.not_exact = self.state.not_exact or why
        log.warning("%s; the run is no longer an exact continuation", why)

    def _reconcile_best(self, checkpoint: dict) -> None:
        """Make best.pth the weights the saved state names the best. last.pth is written first, so a kill
        between the two saves leaves best.pth an improvement behind: it is written again from last.pth,
        saved at the end of that very epoch with its weights (the moving average too). A best.pth that no
        saved state can make again (a version that wrote best.pth first, killed between the two) is
        forgotten: the best is chosen again from the next epoch, which writes best.pth."""
        best, best_epoch = self.run_dir / "best.pth", self.state.best_epoch
        if best_epoch is None or _epoch_of(best) == best_epoch:
            return
        if (self.state.epoch, self.state.batches_done) == (best_epoch, 0) and checkpoint.get("val_metrics"):
            log.warning("%s does not hold epoch %d, which %s names the best (a stop between the two saves): "
                        "written again from it", best, best_epoch, self.run_dir / "last.pth")  # fmt: skip
            if self.ranks.is_main:
                self.checkpoints.save(best_from_last(checkpoint), best)
            return
        self._continue_inexactly(f"{best} no longer holds epoch {best_epoch}, the best so far (a stop between two "
                                 f"saves), nor can it be made again: the best is chosen again from epoch "
                                 f"{self.state.epoch + 1}")  # fmt: skip
        self.state.best_auc = self.state.best_epoch = None

    def _refuse_changing_ended_phases(self, ended: tuple[str, ...], state: TrainerState, counted: bool) -> None:
        """Each phase in ``ended`` has ended, after the epochs ``state.phase_epochs`` counts (none: it had 0,
        unless the last.pth is of an older version, which did not count them: not ``counted``). Given more,
        it cannot go on (its optimizer state is not kept) and the resume went straight past it; given fewer,
        the run's config would say fewer than it trained: both refused, where the resume went on silently."""
        for name in ended:
            trained = state.phase_epochs.get(name, 0 if counted else None)
            given = next((phase.epochs for phase in self.phases if phase.name == name), 0)
            if trained is None or given == trained:
                continue
            why = "asks for more, but an ended phase cannot go on (its optimizer state is not kept)" if given > trained \
                else "is fewer than it trained"  # fmt: skip
            raise ConfigError(
                f"{self.run_dir / 'last.pth'} ended phase {name} after {trained} epoch(s); phase.{name}_epochs="
                f"{given} {why}: resume with phase.{name}_epochs={trained}, or train on from its weights in a new "
                f"run (init_from={self.run_dir / 'last.pth'})"
            )

    def _place_in_schedule(self, checkpoint: dict, state: TrainerState) -> dict:
        """Where the resumed run stands in this run's phases, found by the saved phase's name (a phase
        of 0 epochs is left out of the plan, so the saved index alone could point at another phase).
        A stopped phase given fewer epochs than it has trained would never end, and a schedule without
        it would silently skip the rest of it: both refused. Exactly as many epochs as it has trained
        ends it here. Returns the checkpoint to resume from (without optimizer state once it ended)."""
        saved = checkpoint.get("phase")
        if saved not in PHASE_ORDER:
            return checkpoint
        ended = state.epoch_in_phase == 0 and state.batches_done == 0  # saved as the phase ended
        follows = PHASE_ORDER.index(saved) + ended
        state.phase_index = sum(PHASE_ORDER.index(phase.name) < follows for phase in self.phases)
        self._refuse_changing_ended_phases(PHASE_ORDER[:follows], state, "phase_epochs" in checkpoint["trainer_state"])
        if ended:
            return checkpoint
        trained = state.epoch_in_phase + bool(state.batches_done)  # a part-way epoch counts
        phase = self.phases[state.phase_index] if state.phase_index < len(self.phases) else None
        if phase is None or phase.name != saved or trained > phase.epochs:
            given = phase.epochs if phase is not None and phase.name == saved else 0
            raise ConfigError(
                f"{self.run_dir / 'last.pth'} stopped in phase {saved} after {trained} epoch(s) of it; "
                f"phase.{saved}_epochs={given} is fewer: resume with phase.{saved}_epochs={trained} (the phase "
                "ends now) or more"
            )
        if state.epoch_in_phase == phase.epochs:  # shortened to what it has trained: the phase ends here
            state.phase_index, state.epoch_in_phase = state.phase_index + 1, 0
            return {**checkpoint, "optimizer": None, "scheduler": None}
        return checkpoint
