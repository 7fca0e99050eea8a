"""task=train: two-phase training in a Hydra run dir, then the test evaluation and the registry.

Read in the order it runs (torchtune's recipe shape):

- ``_prepare_run_dir`` (rank 0): the registry it writes at its end tried first, run metadata, the
  embedded dataset generated on first use, the optional audit;
- ``_setup`` (every rank): seed, model (and room for its checkpoints), resume state, data,
  pre-flight checks, loaders, the Trainer;
- ``_train``: ``Trainer.fit``; a non-finite loss registers the run as failed, a stop signal ends it
  after saving last.pth (resume=<run dir> goes on; under submitit the launcher requeues the job,
  which resumes by itself);
- ``_save`` (rank 0): the operating point chosen on validation and stored in best.pth (conf/eval/),
  the test of best.pth, the model card, the registry (promoting the run when it beats the incumbent
  on the promotion set, the same images for every candidate), CAM, the summary.

Under torchrun every rank runs the setup and the training loop (DDP); the process group is left
once training ends, and rank 0 alone evaluates, registers and writes, like a single process.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from deepfake.data.manifest import file_sha256
from deepfake.engine import distributed
from deepfake.engine.precision import resolve_device
from deepfake.engine.reproducibility import seed_everything, set_deterministic
from deepfake.engine.train_state import TrainerState
from deepfake.engine.trainer import Trainer
from deepfake.errors import ConfigError, DataError, OtherRankFailed, RunStopped, TrainingError, UserError
from deepfake.reports.card_facts import describe_source, weights_source
from deepfake.tasks import checkpoints, data_setup, promotion, session
from deepfake.tasks.card import write_card
from deepfake.tasks.display import print_run_summary
from deepfake.tasks.preflight import (
    check_both_classes,
    check_checkpoint_space,
    check_dataset_files,
    check_input_size,
    check_registry,
)
from deepfake.tasks.resume import check_resumed_config, load_last_checkpoint, overrides_kept_if_refused
from deepfake.tasks.resume_argv import finished_entry, finished_message
from deepfake.tasks.run_end import closing_entry, how_to_continue, write_training_curves
from deepfake.tasks.scoring import check_eval_settings, store_operating_point
from deepfake.tasks.test import check_test_images, evaluate_checkpoint, registry_view
from deepfake.tasks.trainer_options import phase_plan, trainer_options
from deepfake.tasks.values import positive_int
from deepfake.tracking.checkpoint import remove_stale_temps
from deepfake.tracking.run_info import CODE_DIR, write_run_info

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What setup built for training and saving."""

    cfg: DictConfig
    out_dir: Path
    trainer: Trainer
    resume_from: dict | None  # the stopped run's last.pth
    entry: dict  # the registry entry, completed as the run goes
    promotion_set: promotion.PromotionSet
    trackers: list  # rank 0's (session.trackers); the task closes them


def run(cfg: DictConfig) -> float | None:
    started = time.perf_counter()
    here = distributed.init_from_env()
    out_dir = session.run_dir()  # this process (rank 0 under torchrun) holds its lock (deepfake.tasks.jobs)
    with overrides_kept_if_refused(cfg, out_dir):
        if cfg.get("resume"):
            check_resumed_config(cfg, out_dir)
            finished = finished_entry(cfg, out_dir)
            if finished is not None:  # e.g. a requeued job whose run had finished: scripts/main.py stops the others
                log.info("%s", finished_message(out_dir, finished))
                return finished.get("best_val_auc")
        _check_settings(cfg)
        run_info = distributed.together(lambda: _prepare_run_dir(cfg, out_dir), main_only=True) or {}
    # The trackers stay open from the first step through the test and CAM of best.pth: one tracker run
    # holds the whole training, and a tracker that is down is found (and warned about) once.
    with session.trackers(cfg) as trackers:
        with overrides_kept_if_refused(cfg, out_dir):
            training = distributed.together(lambda: _setup(cfg, out_dir, run_info, trackers))
        state = _train(training)
        distributed.shut_down()  # training's collectives are over: rank 0 goes on alone
        if not here.is_main:
            return state.best_auc
        return _save(training, state, started)


# ------------------------------------------------------------------------------------ setup
def _check_settings(cfg: DictConfig) -> None:
    """The settings that need neither data nor model, checked by every rank before the run dir is
    written and the images scanned (dataset.batch_size=0 was found after the scan, and left a used dir)."""
    phase_plan(cfg.phase)
    positive_int(cfg.dataset.batch_size, "dataset.batch_size")
    positive_int(cfg.dataset.img_size, "dataset.img_size")
    real_label = cfg.dataset.get("real_label", 1)
    if isinstance(real_label, bool) or real_label not in (0, 1):
        raise ConfigError(f"dataset.real_label={real_label} must be 0 or 1: the CSVs' label for a real image "
                          "(Kaggle's is 1); set the one your CSVs use")  # fmt: skip


def _prepare_run_dir(cfg: DictConfig, out_dir: Path) -> dict:
    """Rank 0, before any rank builds anything: the run dir's metadata, the registry the run writes at
    its end tried before any compute, the embedded dataset generated on first use, the optional audit.
    (The room for the checkpoints is checked once the model is built: building it twice costs 0.3 s.)"""
    # Temps left by a process killed mid-save: this run dir's (when resumed) and the shared registry's.
    for folder in (out_dir, Path(cfg.paths.models_dir)):
        for temp in remove_stale_temps(folder):
            log.info("removed %s, left by a process killed while saving", temp)
    git = write_run_info(out_dir, CODE_DIR)
    config_path = session.save_resolved_config(cfg, out_dir)
    check_registry(session.open_registry(cfg), session.run_name(), out_dir)  # the checkpoints' room: in _setup
    data_setup.ensure_dataset(cfg.dataset)
    check_eval_settings(cfg)  # a bad eval.* setting (or eval.sets path) must not wait for the end of training
    if cfg.train.do_cam:  # nor a bad cam.* one: it failed a run already tested, registered and promoted
        from deepfake.tasks.cam import check_cam_settings  # pytorch-grad-cam: only when asked

        check_cam_settings(cfg, split="valid")
    for csv_key in ("train_csv", "val_csv"):  # before the test CSV: a missing download shows here first
        data_setup.check_split_paths(cfg.dataset, csv_key)
    if cfg.train.do_test and not Path(str(cfg.dataset.test_csv)).is_file():
        raise DataError(f"dataset.test_csv={cfg.dataset.test_csv} does not exist, and the test after training "
                        "needs it; fix the path, or add train.do_test=false")  # fmt: skip
    if cfg.train.audit and not (out_dir / "last.pth").is_file():  # a resumed run was audited when it started
        from deepfake.tasks.audit import audit_dataset  # scikit-learn, imagehash: only when asked

        audit_dataset(cfg, out_dir)
    return {"git": git, "config_path": str(config_path)}


def _setup(cfg: DictConfig, out_dir: Path, run_info: dict, trackers: list) -> TrainingRun:
    seed_everything(cfg.seed)
    set_deterministic(bool(cfg.deterministic))
    here = distributed.ranks()
    device = distributed.device_for_rank(resolve_device(cfg.train.device))
    model, resume_from, source = _model(cfg, out_dir)
    options = trainer_options(cfg, device, model)  # the train.* settings checked before any data is read
    if here.is_main:
        check_checkpoint_space(out_dir, model, options["make_optimizer"], ema=options["ema"] is not None)
    name = resume_from["run_name"] if resume_from else session.run_name()
    log.info("run %s in %s", name, out_dir)
    log.info("overrides: %s", " ".join(session.task_overrides()) or "(none)")
    log.info("hyperparameters: %s", _hyperparameters(cfg))
    preprocess = {**model.preprocess, "img_size": positive_int(cfg.dataset.img_size, "dataset.img_size")}
    check_input_size(model, preprocess["img_size"], model.detector_spec["name"])
    if cfg.train.do_cam:  # a layer without a map of positions failed only once training was over
        from deepfake.explain.cam import check_explainer

        check_explainer(model, cfg.cam.method, cfg.cam.target_layer, preprocess["img_size"])
    stopped_at = ((resume_from or {}).get("preprocess") or {}).get("img_size")
    if stopped_at is not None and stopped_at != preprocess["img_size"]:
        log.warning("resuming at dataset.img_size=%d a run stopped at %d px: its images change size mid-run",
                    preprocess["img_size"], stopped_at)  # fmt: skip
    train_loader, val_loader, batch_images, val_set = _loaders(cfg, preprocess, device, here)
    # Before training: a promotion set that is the test set is refused now, not after hours.
    chosen = promotion.promotion_set(cfg)
    log.info("promotion set (what this run competes for the global best on): %s", chosen)
    val_identity = promotion.split_identity(cfg, val_set)
    trainer = Trainer(
        model,
        train_loader,
        val_loader,
        phase_plan(cfg.phase),
        device=device,
        run_dir=out_dir,
        describe={
            "model_spec": model.detector_spec,
            "preprocess": preprocess,
            "labels": {"real_label": int(cfg.dataset.real_label), "output": "logit of p(fake)"},
            "run_name": name,
            "validated_on": val_identity["images_sha256"],  # the images best_val_auc is measured on
            **({"initialised_from": source} if source else {}),
        },
        loggers=trackers,
        resume_strict=bool(cfg.resume_strict),
        batch_images=batch_images,
        val_input=data_setup.model_input(preprocess, device),
        **options,
    )
    if resume_from is not None:
        trainer.check_resumable(resume_from)  # before the first batch: a refusal keeps the run's own overrides
    entry = {
        "run_name": name,
        **session.run_labels(cfg),
        "run_dir": str(out_dir),
        "backbone": model.detector_spec["name"],
        "dataset": cfg.dataset.name,
        "overrides": session.task_overrides(),
        "config_path": run_info.get("config_path"),
        "git_commit": (run_info.get("git") or {}).get("commit"),
        "git_dirty": (run_info.get("git") or {}).get("dirty"),
        "started_at": session.now_iso(),
        "world_size": here.world_size,
        **({"initialised_from": source} if source else {}),
    }
    return TrainingRun(cfg, out_dir, trainer, resume_from, entry, chosen, trackers)


def _model(cfg: DictConfig, out_dir: Path) -> tuple[torch.nn.Module, dict | None, dict | None]:
    """The backbone, the stopped run's last.pth when resuming, and what the weights were initialised
    from: a new run may start from another checkpoint's weights (init_from), a resumed one keeps its record."""
    model = instantiate(cfg.backbone)
    resume_from = load_last_checkpoint(out_dir, model) if cfg.get("resume") else None
    if resume_from is not None:
        return model, resume_from, resume_from.get("initialised_from")
    if not cfg.get("init_from"):
        return model, None, None
    path = checkpoints.resolve_checkpoint(cfg.init_from, cfg, what="init_from")
    source = weights_source(path, *checkpoints.load_weights_into(model, path))
    log.info("initialised the model from %s", describe_source(source))
    return model, None, source


def _loaders(cfg: DictConfig, preprocess: dict, device: torch.device, here: distributed.Ranks):
    """``(train loader, validation loader, the training batch's device step, validation set)``; rank 0
    decodes every image once first (damaged files, the promotion set's limits)."""
    train_set = data_setup.make_split(
        cfg.dataset, "train_csv", data_setup.train_transform(cfg, preprocess), preprocess=preprocess, training=True
    )
    val_set = data_setup.make_split(
        cfg.dataset, "val_csv", data_setup.eval_transform(preprocess, normalise=False), preprocess=preprocess
    )
    log.info("data: %d train, %d validation images from %s", len(train_set), len(val_set), cfg.dataset.name)
    check_both_classes(train_set, cfg.dataset.train_csv, "train")
    check_both_classes(val_set, cfg.dataset.val_csv, "validation")
    served, loader_kwargs, batch_images = data_setup.train_input(cfg, train_set, preprocess, device)
    if here.is_main:  # decodes every image once: one rank is enough
        check_dataset_files(cfg.dataset, {"train": train_set, "valid": val_set})
        if cfg.train.do_test:  # a test set under the wrong root was found once training had ended
            check_test_images(cfg, preprocess)  # and the caches the end scores from
    batch_size = positive_int(cfg.dataset.batch_size, "dataset.batch_size")
    if here.distributed:
        log.info("rank %d of %d on %s (%s); dataset.batch_size %d per rank: global batch %d", here.rank,
                 here.world_size, device, distributed.backend(), batch_size, here.world_size * batch_size)  # fmt: skip
    return (
        data_setup.make_loader(served, cfg.dataset, device=device, train_seed=int(cfg.seed), **loader_kwargs),
        data_setup.make_loader(val_set, cfg.dataset, device=device, shard=True),
        batch_images,
        val_set,
    )


# ------------------------------------------------------------------------------------ train
def _train(training: TrainingRun) -> TrainerState:
    trainer, is_main = training.trainer, distributed.ranks().is_main
    try:
        state = trainer.fit(resume=training.resume_from)
    except TrainingError as err:
        if is_main:  # recorded with how far it got, never promoted; last.pth stays the last good state
            session.open_registry(training.cfg).record_failure(
                closing_entry(training.entry, trainer, "failed"), error=str(err)
            )
        raise
    except RuntimeError as err:
        if distributed.lost_a_rank(err):  # an event of the cluster, not a bug: one line that says how to go on
            raise OtherRankFailed(f"training lost another rank (killed, out of memory or its node gone: "
                                  f"{str(err).splitlines()[0]}); last.pth keeps the last state saved: "
                                  f"{how_to_continue(training.out_dir)}") from err  # fmt: skip
        raise
    finally:
        trainer.close()
        if is_main:
            write_training_curves(training.out_dir)
    if trainer.stopped_early:
        log.warning(
            "%s: stopped after epoch %d%s, last.pth saved; %s", signal.Signals(trainer.stop.signum).name, state.epoch,
            f" + {state.batches_done} batch(es)" if state.batches_done else "", how_to_continue(training.out_dir),
        )  # fmt: skip
        trainer.stop.hand_back()  # under submitit: requeue the job, which then resumes from last.pth
        raise RunStopped(trainer.stop.signum)
    return state


# ------------------------------------------------------------------------------------- save
def _save(training: TrainingRun, state: TrainerState, started: float) -> float | None:
    cfg, out_dir, trainer = training.cfg, training.out_dir, training.trainer
    best = out_dir / "best.pth"
    try:
        entry = dict(training.entry)
        entry["operating_point"] = store_operating_point(best, cfg, trainer.damaged, trainer.best_predictions)[
            "operating_point"
        ]
        test_metrics = (
            evaluate_checkpoint(best, cfg, out_dir, trackers=training.trackers, step=state.step)
            if cfg.train.do_test
            else None
        )
        if cfg.train.do_cam:  # before registering: a run registered as finished has done all it was asked
            entry |= _explain(best, training, state.step)
        entry = closing_entry(entry, trainer, "finished", None if test_metrics is None else registry_view(test_metrics))
        # What its test and CAM figures measured; the test hashed the bytes it scored.
        entry["checkpoint_sha256"] = test_metrics["checkpoint_sha256"] if test_metrics else file_sha256(best)
        entry["promotion"] = promotion.candidate_promotion(cfg, best, state.best_auc, training.promotion_set)
        card = write_card(best, cfg, entry)  # travels with best.pth when it is promoted
        for tracker in training.trackers:  # best.pth goes only to trackers set to take checkpoints
            tracker.log_artifact(card)
            tracker.log_artifact(best)
        promoted = _register(training, entry, best, card)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (engine.stopping.StopSignal)
        log.warning("interrupted after training; %s (it tests and registers it)", how_to_continue(out_dir))
        raise RunStopped(getattr(stop, "signum", signal.SIGINT)) from None
    if promoted:
        log.info("new global best (AUC %s on %s): %s", entry["promotion"]["auc"], training.promotion_set,
                 cfg.paths.best_model)  # fmt: skip
    seconds = time.perf_counter() - started
    log.info("finished in %.1f s; best val AUC %s at epoch %s", seconds, state.best_auc, state.best_epoch)
    print_run_summary(
        entry, seconds, registry_path=cfg.paths.registry, promoted_to=cfg.paths.best_model if promoted else None
    )
    return state.best_auc


def _register(training: TrainingRun, entry: dict, best: Path, card: Path) -> bool:
    """Whether the run became the global best; a registry it cannot write (read-only, locked, damaged)
    is one line that also says the trained run is kept and how to register it."""
    cfg = training.cfg
    try:
        return session.open_registry(cfg).register_run(
            entry, best, rescore_incumbent=promotion.rescorer(cfg, training.promotion_set), companions=[card]
        )
    except UserError as err:
        raise UserError(f"{err}; the trained run is kept: {how_to_continue(training.out_dir)} "
                        "(it registers it)") from err  # fmt: skip


def _explain(best: Path, training: TrainingRun, step: int) -> dict:
    """train.do_cam: the CAM overlays of best.pth on validation; its metrics for the registry entry."""
    # Imported here: pytorch-grad-cam (cv2, matplotlib) is only paid for when asked.
    from deepfake.tasks.cam import explain_checkpoint, registry_view

    report = explain_checkpoint(best, training.cfg, training.out_dir, split="valid", trackers=training.trackers,
                                step=step)  # fmt: skip
    return {} if report is None else {"cam_metrics": registry_view(report)}


def _hyperparameters(cfg: DictConfig) -> str:
    """One greppable line with what shapes the result (the full config is in config_resolved.yaml)."""
    picked = {
        "seed": cfg.seed,
        "backbone": {k: v for k, v in cfg.backbone.items() if not k.startswith("_")},
        "phase": cfg.phase,
        "optimizer": cfg.optimizer,
        "scheduler": cfg.scheduler,
        "dataset": {k: cfg.dataset[k] for k in ("name", "img_size", "batch_size", "real_label")},
        "augment": {k: v for k, v in cfg.augment.items() if not k.startswith("_")},
        "train": cfg.train,
        "eval": {k: cfg.eval[k] for k in ("threshold_policy", "threshold", "calibrate")},
    }
    return json.dumps(OmegaConf.to_container(OmegaConf.create(picked), resolve=True), separators=(",", ":"))
