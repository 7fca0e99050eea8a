"""Tiny training tasks the engine's tests share: stripes (fake) vs noise (real) at 32 px, a timm test
network, and a Trainer set up as scripts/main.py sets one up (AdamW, timm's warm-up cosine)."""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal
from functools import partial
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler

from deepfake.engine.loaders import train_loader
from deepfake.engine.trainer import Trainer
from deepfake.models import create_detector
from deepfake.tracking.checkpoint import load_checkpoint

SIZE = 32


class Stripes(torch.utils.data.Dataset):
    """Fakes carry a pixel-periodic pattern (every other column raised by ``stripe``); reals are noise.
    Samples look like CsvImageDataset's.

    ``noise``: more noise drawn per load from torch's RNG, as an augmentation draws it (what an exact
    resume must replay). ``damaged``: the items flagged as damaged images. ``signal_on_load=k``: the k-th load, counted across worker processes, sends
    SIGTERM to the training process, so the stop lands wherever the loader happens to be.
    """

    def __init__(self, n: int, seed: int, *, stripe: float = 1.5, noise: float = 0.0, signal_on_load: int | None = None,
                 damaged: frozenset[int] = frozenset()):  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.5
        self.targets = (torch.arange(n) % 2).float()
        self.images[self.targets == 1, :, :, ::2] += stripe
        self.paths = [f"img{i}.jpg" for i in range(n)]
        self.noise = noise
        self.damaged = damaged  # items served as if their files were damaged
        self.signal_on_load = signal_on_load
        if signal_on_load is not None:
            self.loads = multiprocessing.get_context("fork").Value("i", 0)
            self.trainer_pid = os.getpid()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if self.signal_on_load is not None:
            with self.loads.get_lock():
                self.loads.value += 1
                if self.loads.value == self.signal_on_load:
                    os.kill(self.trainer_pid, signal.SIGTERM)
        image = self.images[i] + self.noise * torch.randn(3, SIZE, SIZE) if self.noise else self.images[i]
        return {"image": image, "target": self.targets[i], "index": i, "damaged": i in self.damaged}

    def damage_reason(self, i):
        return "truncated" if i in self.damaged else None


def tiny_model(backbone: str = "test_resnet") -> torch.nn.Module:
    torch.manual_seed(0)
    return create_detector(backbone)


def tiny_trainer(run_dir: Path, phases, train, val, *, backbone: str = "test_resnet", weight_decay: float = 0.0,
                 run_name: str = "unit", **kwargs) -> Trainer:  # fmt: skip
    """A Trainer of ``tiny_model(backbone)`` on the ``train`` and ``val`` loaders; ``kwargs`` are Trainer's."""
    model = tiny_model(backbone)
    return Trainer(
        model, train, val, phases,
        make_optimizer=partial(torch.optim.AdamW, weight_decay=weight_decay),
        make_scheduler=partial(CosineLRScheduler, lr_min=1e-6, warmup_lr_init=1e-6, warmup_prefix=True, t_in_epochs=False),
        device=torch.device("cpu"), run_dir=run_dir,
        describe={"model_spec": model.detector_spec, "preprocess": {**model.preprocess, "img_size": SIZE},
                  "labels": {"real_label": 1}, "threshold": 0.5, "run_name": run_name},
        **kwargs,
    )  # fmt: skip


def stripes_trainer(run_dir: Path, phases, *, seed: int = 0, batch_size: int = 16, damaged=frozenset(),
                    **kwargs) -> Trainer:  # fmt: skip
    """The unit tests' task: 48 training images (``damaged`` flagged so) in batches of ``batch_size``
    shuffled by ``seed``, 32 to validate, no augmentation."""
    train = train_loader(Stripes(48, 1, damaged=damaged), batch_size, seed=seed)
    val = torch.utils.data.DataLoader(Stripes(32, 2), batch_size=16)
    return tiny_trainer(run_dir, phases, train, val, **kwargs)


def stop_after(trainer: Trainer, optimizer_steps: int) -> Trainer:
    """The trainer stops (as on SIGTERM) once it has taken ``optimizer_steps`` steps."""
    step = trainer._optimizer_step

    def stepping():
        step()
        if trainer.state.step == optimizer_steps:
            trainer.stop.signum = signal.SIGTERM

    trainer._optimizer_step = stepping
    return trainer


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics_log.csv less its wall-clock column: what two runs of the same training must share."""
    rows = list(csv.DictReader((run_dir / "metrics_log.csv").open()))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_models(a: Path, b: Path) -> None:
    """The two checkpoints hold the very same weights, the moving average of train.ema included."""
    left, right = load_checkpoint(a), load_checkpoint(b)
    for weights in ("model", "ema_model"):
        if left.get(weights) is None:
            assert right.get(weights) is None
            continue
        assert left[weights].keys() == right[weights].keys()
        for key in left[weights]:
            assert torch.equal(left[weights][key], right[weights][key]), (weights, key)
