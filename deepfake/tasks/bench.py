"""task=bench: how much of the machine the pipeline leaves to the model (deepfake/engine/benchmark.py).

For the configured backbone, img_size, batch size, precision, device and workers, in one process:
(a) the bare training step on tensors already on the device, and (a_eval) the bare forward pass;
(b) the training pipeline from the image files (loader, augmentation, step, logging, best.pth and
last.pth saved per epoch as a run saves them), timed per epoch, its validation left out; (c) scoring the validation images from files;
(d) the training loader alone; (e) peak resident memory of this process and its workers (and CUDA's
peak allocation); with ``bench.cache``, (c') scoring and (d') the loader from the decoded-image cache. bench.json in the run dir holds the figures, the ratios b/a and c/a_eval, and the
machine they were measured on.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.table import Table
from torch.utils.data import Subset

from deepfake.engine import benchmark
from deepfake.engine.evaluate import predict
from deepfake.engine.fast_path import resolve_channels_last, resolve_compile, resolve_num_workers
from deepfake.engine.loaders import shut_down_workers
from deepfake.engine.phases import steps_per_epoch
from deepfake.engine.precision import resolve_device, resolve_precision
from deepfake.engine.reproducibility import seed_everything, set_deterministic
from deepfake.engine.trainer import Trainer
from deepfake.errors import ConfigError
from deepfake.tasks import data_setup, session
from deepfake.tasks.trainer_options import phase_plan, trainer_options
from deepfake.tasks.values import non_negative, positive_int
from deepfake.tracking.checkpoint import atomic_write_text
from deepfake.tracking.console import console
from deepfake.tracking.loggers import Tracker

log = logging.getLogger(__name__)

# Training steps that a checkpoint save shares the machine with, in the switches' figure: on a
# 2-core CPU about the time a background write of CvT-13's last.pth takes.
SWITCH_STEPS = 3
CACHE_MODES = ("none", "eval", "all")  # bench.cache


class EpochClock(Tracker):
    """Times each epoch of (b) as the trackers see it: from its first batch to its end (checkpoints
    saved), less its validation ((c) measures scoring) and less one repeat of ``bare`` (the bare
    step) run after its last training batch, so every timed epoch has a bare figure measured inside
    it. Before that repeat the background checkpoint writes in flight are waited for (``settle``),
    and the wait counts as the epoch's: they overlap only with training."""

    def __init__(self, steps_per_epoch: int, bare: Callable[[], int] | None = None, device=None,
                 settle: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.steps_per_epoch, self.bare, self.device, self.settle = steps_per_epoch, bare, device, settle
        self.epoch_s, self.wall_s, self.validation_s, self.bare_rates = [], [], [], []
        self.started, self.excluded = time.perf_counter(), 0.0
        self.bare_at: set[int] = set()  # steps a bare repeat ran at: an epoch's first log interval repeats the step

    def log_metrics(self, metrics, step: int) -> None:
        now = time.perf_counter()
        if "epoch" in metrics:  # the epoch's end
            self.validation_s.append(float(metrics["time/validation_s"]))
            self.wall_s.append(now - self.started)
            self.epoch_s.append(now - self.started - self.excluded - self.validation_s[-1])
            self.started, self.excluded = time.perf_counter(), 0.0
        elif (self.bare is not None and step % self.steps_per_epoch == 0 and step > self.steps_per_epoch
              and step not in self.bare_at):  # fmt: skip
            self.bare_at.add(step)
            self.settle()  # after the epoch's last batch (not the warm-up's)
            paused = time.perf_counter()
            self.bare_rates.append(benchmark.rate(self.bare, self.device))
            self.excluded += time.perf_counter() - paused


def _check(settings: DictConfig, cfg: DictConfig) -> None:
    """The bench's own settings, before any measuring."""
    if positive_int(settings.epochs, "bench.epochs") < 2:
        raise ConfigError(f"bench.epochs={settings.epochs}: the first epoch is the warm-up; use at least 2")
    positive_int(cfg.train.accumulate_grad_batches, "train.accumulate_grad_batches")  # the clock divides by it
    if str(settings.cache) not in CACHE_MODES:
        raise ConfigError(
            f"bench.cache={settings.cache!r}; use none, eval (scoring from the cache) or all (the loader too)"
        )


def run(cfg: DictConfig) -> float:
    out_dir = session.run_dir()
    settings = cfg.bench
    _check(settings, cfg)
    seed_everything(cfg.seed)
    set_deterministic(bool(cfg.deterministic))  # as a run trains: cudnn.benchmark unless deterministic
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    data_setup.ensure_dataset(cfg.dataset)
    model, fast_model, channels_last, backend = _bare_model(cfg, device)
    preprocess = {**model.preprocess, "img_size": positive_int(cfg.dataset.img_size, "dataset.img_size")}
    batch_size, img_size = positive_int(cfg.dataset.batch_size, "dataset.batch_size"), preprocess["img_size"]
    # (b) trains as a run does: from the decoded-image cache under dataset.cache=all (so scripts/
    # bench_switches.py can set it the other way). (c) and (d) read the files whatever dataset.cache says:
    # they are what the cache's (c') and (d') are measured against (with the cache, the gain read 1.0).
    files = data_setup.make_split(cfg.dataset, "train_csv", data_setup.train_transform(cfg, preprocess))
    as_a_run = data_setup.make_split(cfg.dataset, "train_csv", data_setup.train_transform(cfg, preprocess),
                                     preprocess=preprocess, training=True)  # fmt: skip
    val_set = data_setup.make_split(cfg.dataset, "val_csv", data_setup.eval_transform(preprocess, normalise=False))
    to_input = data_setup.model_input(preprocess, device)
    repeats = {"repeats": positive_int(settings.repeats, "bench.repeats"),
               "warmup": non_negative(settings.warmup, "bench.warmup", int)}  # fmt: skip
    timed = partial(benchmark.images_per_second, device=device, **repeats)
    memory = benchmark.PeakMemory(device)

    make_optimizer = instantiate(cfg.optimizer)  # the run's optimizer, for every bare step
    bare_step = benchmark.bare_train_steps(fast_model, batch_size, img_size, device, precision,
                                           positive_int(settings.steps, "bench.steps"), channels_last,
                                           make_optimizer=make_optimizer)  # fmt: skip
    bare_forward = benchmark.bare_forward(model, batch_size, img_size, device, precision,
                                          positive_int(settings.forward_batches, "bench.forward_batches"),
                                          channels_last)  # fmt: skip
    loader = _train_loader(cfg, files, preprocess, device)[0]
    figures = {"bare_train_step": timed(bare_step, compiled=backend is not None),
               "loader": timed(benchmark.loader_pass(loader))}  # fmt: skip
    shut_down_workers(loader)
    # Each ratio pairs every pipeline repeat with a bare repeat run just before it (noisy machines).
    with memory.watching():
        figures["train_pipeline"], train_ratio = _train_pipeline(cfg, as_a_run, val_set, preprocess, device,
                                                                 out_dir / "pipeline", bare_step)  # fmt: skip
    figures["train_pipeline"].update(memory.report())
    eval_loader = data_setup.make_loader(val_set, cfg.dataset, device=device)
    with memory.watching():
        figures["eval_pipeline"], figures["bare_forward"], eval_ratio = benchmark.paired_rates(
            lambda: len(predict(model, eval_loader, device, precision, to_input=to_input).indices), bare_forward, device,
            **repeats,
        )  # fmt: skip
    figures["eval_pipeline"].update(memory.report())
    figures.update(_cached_figures(cfg, preprocess, timed, model, device, precision))
    if "fused" in cfg.optimizer:  # an optimizer with a fused kernel (AdamW, SGD)
        figures["switches"] = _switch_costs(model, make_optimizer, batch_size, img_size, device, precision,
                                            channels_last, out_dir, repeats["repeats"])  # fmt: skip

    settings_used = {
        "backbone": model.detector_spec["name"], "img_size": img_size, "batch_size": batch_size,
        "precision": precision, "device": str(device), "channels_last": channels_last, "compile": backend or False,
        **_switches(cfg, device), "train_images": len(files), "val_images": len(val_set),
    }  # fmt: skip
    report = {"settings": settings_used, "figures": figures, "ratios": _ratios(figures, train_ratio, eval_ratio),
              "machine": benchmark.machine()}  # fmt: skip
    atomic_write_text(out_dir / "bench.json", json.dumps(report, indent=2) + "\n")
    _print(report, out_dir)
    return report["ratios"]["train_pipeline_over_bare_step"]


def _switch_costs(model, make_optimizer, batch_size: int, img_size: int, device, precision: str,
                  channels_last: bool, out_dir: Path, repeats: int) -> dict:  # fmt: skip
    """optimizer.fused and train.background_checkpoints, each side timed (benchmark.switch_costs), on a
    twin of the model (they set its gradients and step it)."""
    twin = copy.deepcopy(model)
    steps = benchmark.bare_train_steps(twin, batch_size, img_size, device, precision, SWITCH_STEPS,
                                       channels_last, make_optimizer=make_optimizer)  # fmt: skip
    return benchmark.switch_costs(twin, make_optimizer, steps, device, out_dir / "switches", repeats)


def _bare_model(cfg: DictConfig, device: torch.device):
    """``(model, the model the bare steps run, channels_last, compile backend)``: the bare figures
    run what training runs, compiled when train.compile is on (its cost lands in warmup_s)."""
    model = instantiate(cfg.backbone).to(device)
    channels_last = resolve_channels_last(cfg.train.channels_last, device, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    backend = resolve_compile(cfg.train.compile)
    return model, torch.compile(model, backend=backend) if backend else model, channels_last, backend


def _switches(cfg: DictConfig, device: torch.device) -> dict:
    """The fast-path settings bench.json records beside its figures."""
    return {
        "num_workers": resolve_num_workers(cfg.dataset.num_workers, device), "cache": str(cfg.bench.cache),
        "train_from_cache": str(cfg.dataset.get("cache", "none")) == "all",  # (b) as a run: dataset.cache
        "decode": str(cfg.dataset.decode), "fused_optimizer": bool(cfg.optimizer.get("fused", False)),
        "background_checkpoints": bool(cfg.train.background_checkpoints),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,  # set from `deterministic`, as a run sets it
    }  # fmt: skip


def _cached_figures(cfg: DictConfig, preprocess: dict, timed, model, device, precision: str) -> dict:
    """(c') scoring and, with ``bench.cache=all``, (d') the training loader, from the decoded-image cache
    (built first when absent, in dataset.cache_dir where training finds it later; its cost reported)."""
    mode = str(cfg.bench.cache)  # one of CACHE_MODES, checked before any measuring
    figures = {}
    if mode == "none":
        return figures
    started = time.perf_counter()
    val_set = data_setup.make_split(cfg.dataset, "val_csv", data_setup.eval_transform(preprocess, normalise=False))
    data_setup.attach_cache(val_set, cfg.dataset, preprocess, mode="eval")
    opened_s = time.perf_counter() - started
    eval_loader = data_setup.make_loader(val_set, cfg.dataset, device=device)
    to_input = data_setup.model_input(preprocess, device)
    figures["eval_cached"] = {**timed(lambda: len(predict(model, eval_loader, device, precision, to_input=to_input).indices)),
                              "cache_open_s": round(opened_s, 3)}  # fmt: skip
    if mode == "all":
        started = time.perf_counter()
        train_set = data_setup.make_split(cfg.dataset, "train_csv", data_setup.train_transform(cfg, preprocess))
        data_setup.attach_cache(train_set, cfg.dataset, preprocess, training=True, mode="all")
        opened_s = time.perf_counter() - started
        loader = _train_loader(cfg, train_set, preprocess, device)[0]
        figures["loader_cached"] = {**timed(benchmark.loader_pass(loader)), "cache_open_s": round(opened_s, 3)}
        shut_down_workers(loader)
    return figures


def _train_loader(cfg: DictConfig, train_set, preprocess: dict, device):
    """The training loader as a run builds it (dataset.decode included), and its device-side step."""
    served, loader_kwargs, batch_images = data_setup.train_input(cfg, train_set, preprocess, device)
    return data_setup.make_loader(
        served, cfg.dataset, device=device, train_seed=int(cfg.seed), **loader_kwargs
    ), batch_images


def _train_pipeline(
    cfg: DictConfig, train_set, val_set, preprocess: dict, device, run_dir: Path, bare_step
) -> tuple[dict, float]:
    """(b) and b/a: the Trainer on the images as a run reads them (the files, or the decoded-image cache under
    dataset.cache=all), fine-tuning for bench.epochs epochs with a fresh model; each
    epoch timed by an EpochClock (its checkpoints saved as a run saves them, its validation, one
    batch, left out), with one repeat of ``bare_step`` timed inside it, apart."""
    epochs = int(cfg.bench.epochs)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = instantiate(cfg.backbone)
    loader, batch_images = _train_loader(cfg, train_set, preprocess, device)
    # The clock counts optimizer steps, of which an epoch has fewer than batches when they accumulate.
    accumulate = positive_int(cfg.train.accumulate_grad_batches, "train.accumulate_grad_batches")
    clock = EpochClock(steps_per_epoch(len(loader), accumulate), bare_step, device)
    trainer = Trainer(
        model,
        loader,
        data_setup.make_loader(
            Subset(val_set, range(min(len(val_set), int(cfg.dataset.batch_size)))), cfg.dataset, device=device
        ),  # fmt: skip
        phase_plan(cfg.phase, head_epochs=0, finetune_epochs=epochs, warmup_epochs=0),
        device=device,
        run_dir=run_dir,
        describe={"model_spec": model.detector_spec, "run_name": "bench"},
        loggers=[clock],
        batch_images=batch_images,
        val_input=data_setup.model_input(preprocess, device),
        **trainer_options(cfg, device, model),  # as a run trains: the same train.* settings
    )
    clock.settle = trainer.checkpoints.wait
    try:
        trainer.fit()
    finally:
        trainer.close()
    trained = len(loader) * loader.batch_size if loader.drop_last else len(train_set)  # images per epoch
    rates = [trained / s for s in clock.epoch_s[1:]]  # the first epoch: warm-up
    return {
        **benchmark.figure(rates),
        "bare_step_inside_each": [round(rate, 2) for rate in clock.bare_rates],
        "warmup_s": round(clock.wall_s[0], 3),
        "validation_s": round(statistics.median(clock.validation_s[1:]), 3),  # per epoch, not in (b)
    }, benchmark.paired_ratio(list(zip(clock.bare_rates, rates)))


def _ratios(figures: dict, train_ratio: float, eval_ratio: float) -> dict:
    """b/a and c/a_eval (paired), and what the decoded-image cache gained where it was measured."""
    ratios = {"train_pipeline_over_bare_step": train_ratio, "eval_pipeline_over_bare_forward": eval_ratio}
    if "eval_cached" in figures:
        ratios["eval_cached_over_bare_forward"] = _ratio(figures["eval_cached"], figures["bare_forward"])
        ratios["cache_gain_eval"] = _ratio(figures["eval_cached"], figures["eval_pipeline"])
    if "loader_cached" in figures:
        ratios["cache_gain_loader"] = _ratio(figures["loader_cached"], figures["loader"])
    return ratios


def _ratio(pipeline: dict, bare: dict) -> float:
    return round(pipeline["images_per_s"] / bare["images_per_s"], 3)


def _precision_name(precision: str) -> str:
    """Lightning's names ("32", "16") as a reader says them: "batch 32, 32 on cpu" read as two batches."""
    return {"32": "fp32", "16": "fp16"}.get(str(precision), str(precision))


def _switches_line(switches: dict) -> str:
    steps, costs = switches["optimizer_step_s"], switches["checkpoint_cost_s"]
    return (f"optimizer.fused: a step takes {steps['fused'] * 1000:.1f} ms fused, {steps['per_tensor'] * 1000:.1f} ms "
            f"per tensor; train.background_checkpoints: saving {switches['checkpoint_mib']:.0f} MiB (model and "
            f"optimizer state) adds to {SWITCH_STEPS} training steps ({switches['steps_alone_s']:.2f} s): "
            f"{_cost(costs['background'])} in the background, {_cost(costs['synchronous'])} written synchronously")  # fmt: skip


def _cost(seconds: float) -> str:
    """A save's cost is (save + steps) - (steps alone): below zero, the machine's noise outweighed it."""
    return f"{seconds:.3f} s" if seconds >= 0 else f"within noise ({seconds:.3f} s)"


def _print(report: dict, out_dir: Path) -> None:
    table = Table(title=f"task=bench: {report['settings']['backbone']} at {report['settings']['img_size']} px, "
                        f"batch {report['settings']['batch_size']}, {_precision_name(report['settings']['precision'])} on "
                        f"{report['settings']['device']}")  # fmt: skip
    table.add_column("measured")
    table.add_column("images/s", justify="right")
    table.add_column("repeats", justify="right")
    # (b) reads the images as a run does: from the decoded cache under dataset.cache=all, else the files
    source = "the decoded cache" if report["settings"]["train_from_cache"] else "files"
    labels = {
        "bare_train_step": "(a) bare training step", "bare_forward": "(a_eval) bare forward",
        "train_pipeline": f"(b) training from {source}", "eval_pipeline": "(c) scoring from files",
        "loader": "(d) training loader alone", "eval_cached": "(c') scoring from the decoded cache",
        "loader_cached": "(d') training loader from the cache",
    }  # fmt: skip
    for key, label in labels.items():
        if key not in report["figures"]:
            continue
        figure = report["figures"][key]
        table.add_row(label, f"{figure['images_per_s']:.1f}", ", ".join(f"{r:.0f}" for r in figure["repeats"]))
    console.print(table)
    ratios = report["ratios"]
    memory = report["figures"]["train_pipeline"]
    console.print(
        f"b/a = {ratios['train_pipeline_over_bare_step']:.3f}, c/a_eval = {ratios['eval_pipeline_over_bare_forward']:.3f}; "
        f"(b leaves out each epoch's validation, {memory['validation_s']:.2f} s); peak RSS (main + workers) while training "
        f"{memory['peak_rss_mib']} MiB; {out_dir / 'bench.json'}"
    )
    if switches := report["figures"].get("switches"):
        console.print(_switches_line(switches))
    gains = {key: ratios[key] for key in ("cache_gain_eval", "cache_gain_loader") if key in ratios}
    if gains:
        console.print("decoded-image cache: " + ", ".join(f"{key.replace('cache_gain_', '')} {value:.2f}x"
                                                          for key, value in gains.items()))  # fmt: skip
