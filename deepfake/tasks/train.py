"""task=train: two-phase training in a Hydra run dir, then the test evaluation and the registry.

Setup (seed, run metadata, model, resume state, data, pre-flight checks, loaders) -> Trainer.fit
-> test best.pth -> register the run (promoting it to the global best when its validation AUC is
the highest) -> summary. A stop signal ends it after saving last.pth (resume=<run dir> goes on;
under submitit the launcher requeues the job, which resumes by itself); a non-finite loss registers
the run as failed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from deepfake.engine.phases import plan_phases
from deepfake.engine.precision import resolve_device, resolve_precision
from deepfake.engine.reproducibility import seed_everything, set_deterministic
from deepfake.engine.trainer import Trainer
from deepfake.errors import ConfigError, RunStopped, TrainingError
from deepfake.tasks import builders
from deepfake.tasks.card import write_card
from deepfake.tasks.display import print_run_summary
from deepfake.tasks.preflight import check_dataset_files, check_input_size
from deepfake.tasks.resume import check_resumed_config, load_last_checkpoint
from deepfake.tasks.test import evaluate_checkpoint, registry_view
from deepfake.tracking.checkpoint import remove_stale_temps
from deepfake.tracking.run_info import write_run_info

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Without DDP every rank would train alone and write its own run dir and registry entry.
        raise ConfigError("distributed launches (torchrun, WORLD_SIZE>1) are not supported yet; run one process")
    started_wall, started = time.perf_counter(), builders.now_iso()
    out_dir = builders.run_dir()
    if cfg.get("resume"):
        check_resumed_config(cfg, out_dir)
    # Temps left by a process killed mid-save: this run dir's (when resumed) and the shared registry's.
    for folder in (out_dir, Path(cfg.paths.models_dir)):
        for temp in remove_stale_temps(folder):
            log.info("removed %s, left by a process killed while saving", temp)
    seed_everything(cfg.seed)
    set_deterministic(bool(cfg.deterministic))
    git = write_run_info(out_dir, Path(cfg.paths.root_dir))
    config_path = builders.save_resolved_config(cfg, out_dir)

    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model = instantiate(cfg.backbone)
    resume_from = load_last_checkpoint(out_dir, model) if cfg.get("resume") else None
    name = resume_from["run_name"] if resume_from else builders.run_name()
    log.info("run %s in %s", name, out_dir)
    log.info("overrides: %s", " ".join(builders.task_overrides()) or "(none)")
    log.info("hyperparameters: %s", _hyperparameters(cfg))
    if cfg.get("init_from") and resume_from is None:
        source = builders.resolve_checkpoint(cfg.init_from, cfg, what="init_from")
        builders.load_weights_into(model, source)
        log.info("initialised the model from %s", source)
    preprocess = {**model.preprocess, "img_size": builders.positive_int(cfg.dataset.img_size, "dataset.img_size")}
    check_input_size(model, preprocess["img_size"], model.detector_spec["name"])
    builders.ensure_dataset(cfg.dataset)
    train_transform = instantiate(cfg.augment)(
        mean=preprocess["mean"], std=preprocess["std"], interpolation=preprocess["interpolation"]
    )
    train_set = builders.make_split(cfg.dataset, "train_csv", train_transform)
    val_set = builders.make_split(cfg.dataset, "val_csv", builders.eval_transform(preprocess))
    log.info("data: %d train, %d validation images from %s", len(train_set), len(val_set), cfg.dataset.name)
    check_dataset_files(cfg.dataset, {"train": train_set, "valid": val_set})

    trainer = Trainer(
        model,
        builders.make_loader(train_set, cfg.dataset, train=True, device=device),
        builders.make_loader(val_set, cfg.dataset, train=False, device=device),
        plan_phases(**OmegaConf.to_container(cfg.phase, resolve=True)),
        make_optimizer=instantiate(cfg.optimizer),
        make_scheduler=instantiate(cfg.scheduler),
        device=device,
        run_dir=out_dir,
        describe={
            "model_spec": model.detector_spec,
            "preprocess": preprocess,
            "labels": {"real_label": int(cfg.dataset.real_label), "output": "logit of p(fake)"},
            "threshold": float(cfg.train.threshold),
            "run_name": name,
        },
        precision=precision,
        accumulate_grad_batches=builders.positive_int(cfg.train.accumulate_grad_batches, "train.accumulate_grad_batches"),
        grad_clip_norm=cfg.train.grad_clip_norm,
        seed=int(cfg.seed),
        loggers=builders.build_loggers(cfg),
    )
    entry = {
        "run_name": name,
        "run_dir": str(out_dir),
        "backbone": model.detector_spec["name"],
        "dataset": cfg.dataset.name,
        "overrides": builders.task_overrides(),
        "config_path": str(config_path),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "started_at": started,
    }
    registry = builders.open_registry(cfg)
    try:
        state = trainer.fit(resume=resume_from)
    except TrainingError as err:
        # Recorded with how far it got, never promoted; last.pth stays the last good state.
        registry.record_failure(_finished(entry, trainer, "failed"), error=str(err))
        raise
    finally:
        trainer.close()
    if trainer.stopped_early:
        log.warning(
            "%s: stopped after epoch %d%s, last.pth saved; resume with: python scripts/main.py resume=%s",
            signal.Signals(trainer.stop.signum).name, state.epoch,
            f" + {state.batches_done} batch(es)" if state.batches_done else "", out_dir,
        )  # fmt: skip
        trainer.stop.hand_back()  # under submitit: requeue the job, which then resumes from last.pth
        raise RunStopped(trainer.stop.signum)

    try:
        test_metrics = None
        if cfg.train.do_test:
            test_metrics = evaluate_checkpoint(out_dir / "best.pth", cfg, out_dir)
        entry = _finished(entry, trainer, "finished", None if test_metrics is None else registry_view(test_metrics))
        card = write_card(out_dir / "best.pth", cfg, entry)  # travels with best.pth when it is promoted
        promoted = registry.register_run(entry, out_dir / "best.pth", companions=[card])
    except KeyboardInterrupt:
        log.warning("interrupted after training; resume with: python scripts/main.py resume=%s (tests and registers it)",
                    out_dir)  # fmt: skip
        raise RunStopped(signal.SIGINT) from None
    if promoted:
        log.info("new global best (val AUC %s): %s", state.best_auc, cfg.paths.best_model)
    if cfg.train.do_cam:
        # Imported here: pytorch-grad-cam (cv2, matplotlib) is only paid for when asked; the CAM
        # metrics join the registry entry registered just above.
        from deepfake.tasks.cam import explain_checkpoint

        explain_checkpoint(out_dir / "best.pth", cfg, out_dir, split="valid")
    seconds = time.perf_counter() - started_wall
    log.info("finished in %.1f s; best val AUC %s at epoch %s", seconds, state.best_auc, state.best_epoch)
    print_run_summary(
        entry, seconds, registry_path=cfg.paths.registry, promoted_to=cfg.paths.best_model if promoted else None
    )
    return state.best_auc


def _finished(entry: dict, trainer: Trainer, status: str, test_metrics: dict | None = None) -> dict:
    state = trainer.state
    return {
        **entry,
        "status": status,
        "best_val_auc": state.best_auc,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "ended_at": builders.now_iso(),
        "damaged_images": trainer.damaged.counts(),
        "test_metrics": test_metrics,
    }


def _hyperparameters(cfg: DictConfig) -> str:
    """One greppable line with what shapes the result (the full config is in config_resolved.yaml)."""
    picked = {
        "seed": cfg.seed,
        "backbone": {k: v for k, v in cfg.backbone.items() if k != "_target_"},
        "phase": cfg.phase,
        "optimizer": cfg.optimizer,
        "scheduler": cfg.scheduler,
        "dataset": {k: cfg.dataset[k] for k in ("name", "img_size", "batch_size", "real_label")},
        "augment": {k: v for k, v in cfg.augment.items() if not k.startswith("_")},
        "train": cfg.train,
    }
    return json.dumps(OmegaConf.to_container(OmegaConf.create(picked), resolve=True), separators=(",", ":"))
