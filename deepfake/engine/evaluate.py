"""Run a detector over a loader and collect p(fake) per sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch.utils.data import DataLoader

from deepfake.data.samplers import ShardSampler
from deepfake.engine import distributed
from deepfake.engine.precision import autocast
from deepfake.errors import CheckpointError


@dataclass
class Predictions:
    """Per-sample outputs in dataset order (``indices`` map back to CSV rows)."""

    indices: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    damaged: list[int] = field(default_factory=list)

    @property
    def probs(self) -> np.ndarray:
        return fake_probability(self.logits)

    def refuse_non_finite(self, what: str) -> Predictions:
        """These predictions, or a CheckpointError when a score is nan or inf: every figure and call made
        from it would be meaningless (a nan p(fake) is called real), and scikit-learn's refusal a traceback."""
        bad = int((~np.isfinite(self.logits)).sum())
        if bad:
            raise CheckpointError(
                f"{what}: the model's score of {bad} of {len(self.logits)} images is not finite (nan or inf); "
                "its weights are broken, or its precision overflows (try train.precision=32)"
            )
        return self

    def loss(self) -> float:
        return float(
            F.binary_cross_entropy_with_logits(torch.from_numpy(self.logits), torch.from_numpy(self.targets)).item()
        )


def fake_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """p(fake) = sigmoid(logit / temperature); a calibrated checkpoint stores its temperature.

    The one place logits become probabilities (test, predict, calibration, operating points).
    """
    return expit(np.asarray(logits, dtype=np.float64) / float(temperature))


def verdict(p_fake: float, threshold: float) -> str:
    """The call every task makes of one p(fake): fake at or above the threshold."""
    return "fake" if p_fake >= threshold else "real"


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str = "32",
    on_batch=None,
    to_input=None,
) -> Predictions:
    """Eval-mode forward over ``loader``; ``on_batch()`` is called once per batch (progress bars).
    ``to_input(batch)`` makes a batch into model input on the device (uint8 images normalised there,
    ``data_setup.model_input``); without it the batch's images are the input already.

    The logits stay on the device until the pass ends: a copy to the host per batch would make the
    host wait for each forward pass before it may queue the next, leaving a GPU idle in between."""
    model.eval()
    indices, targets, logits, damaged = [], [], [], []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True) if to_input is None else to_input(batch)
        if images.dtype == torch.uint8:
            raise TypeError("predict: the loader serves uint8 images; pass to_input=data_setup.model_input(...)")
        with autocast(device, precision):
            out = model(images).squeeze(1)
        logits.append(out.float())
        targets.append(batch["target"].float())
        indices.append(batch["index"])
        damaged.extend(batch["index"][batch["damaged"]].tolist())
        if on_batch is not None:
            on_batch()
    if not logits:
        if isinstance(loader.sampler, ShardSampler):  # more ranks than images: this rank's share is empty
            empty = np.zeros(0, dtype=np.float32)
            return Predictions(indices=np.zeros(0, dtype=np.int64), targets=empty, logits=empty.copy())
        raise ValueError("the loader produced no batches")
    return Predictions(
        indices=torch.cat(indices).numpy(),
        targets=torch.cat(targets).numpy().astype(np.float32),
        logits=torch.cat(logits).cpu().numpy().astype(np.float32),  # the pass's one wait for the device
        damaged=damaged,
    )


def gather_predictions(preds: Predictions) -> Predictions:
    """Every rank's shard of the predictions, merged in dataset order on every rank.

    Shards come from a :class:`~deepfake.data.samplers.ShardSampler` (no padding), so each sample
    appears exactly once and the metrics equal those of one process scoring the whole set.
    """
    shards = distributed.all_gather_objects(preds)
    if len(shards) == 1:
        return preds
    indices = np.concatenate([shard.indices for shard in shards])
    order = np.argsort(indices, kind="stable")
    return Predictions(
        indices=indices[order],
        targets=np.concatenate([shard.targets for shard in shards])[order],
        logits=np.concatenate([shard.logits for shard in shards])[order],
        damaged=sorted(index for shard in shards for index in shard.damaged),
    )
