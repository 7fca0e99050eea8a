"""The two-phase schedule: head-only with a frozen backbone, then fine-tuning everything."""

from __future__ import annotations

import math
from dataclasses import dataclass

from deepfake.errors import ConfigError


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    backbone_frozen: bool
    lr_head: float
    lr_backbone: float
    warmup_epochs: float = 0.0
    scheduled: bool = False  # cosine with linear warmup; otherwise constant learning rates
    weight_decay_exclude_1d: bool = True  # no weight decay on biases, norm weights and other 1-d parameters
    layer_decay: float | None = None  # layer-wise decay of the backbone's rate (its groups' lr_scale); None: off


# The phases in the order they run; plan_phases leaves out those of 0 epochs.
PHASE_ORDER = ("head", "finetune")


def steps_per_epoch(batches_per_epoch: int, accumulate: int) -> int:
    # The last, partial accumulation window of an epoch still makes an optimizer step.
    return math.ceil(batches_per_epoch / accumulate)


def plan_phases(
    head_epochs: int,
    finetune_epochs: int,
    lr_head: float,
    lr_backbone: float,
    warmup_epochs: float = 0.0,
    weight_decay_exclude_1d: bool = True,
    layer_decay: float | None = None,
) -> list[Phase]:
    """The phases that actually run; a phase of 0 epochs is left out. Layer decay and the warm-up apply
    where the backbone trains: in fine-tuning, whose schedule applies the groups' ``lr_scale``."""
    if head_epochs < 0 or finetune_epochs < 0:
        raise ConfigError(
            f"phase.head_epochs={head_epochs}, phase.finetune_epochs={finetune_epochs}: epochs must be >= 0"
        )
    if head_epochs == finetune_epochs == 0:  # else found out after the scans, at a best.pth never written
        raise ConfigError("phase.head_epochs=0, phase.finetune_epochs=0: nothing to train; give either phase an epoch")
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"phase.layer_decay={layer_decay}: must be in (0, 1] (e.g. 0.75), or null for none")
    if finetune_epochs and warmup_epochs >= finetune_epochs:
        # Warm-up ramps the rate up over its steps and the cosine follows: a warm-up as long as the phase
        # (or longer) trains it all below the rate asked for, which is never reached, and never decays.
        raise ConfigError(
            f"phase.warmup_epochs={warmup_epochs:g} must be fewer than phase.finetune_epochs={finetune_epochs} (the "
            "phase it warms up): it would take the whole phase, whose rates never reach phase.lr_head and "
            "phase.lr_backbone; lower phase.warmup_epochs (0 for none)"
        )
    phases = [
        Phase(
            "head",
            head_epochs,
            backbone_frozen=True,
            lr_head=lr_head,
            lr_backbone=0.0,
            weight_decay_exclude_1d=weight_decay_exclude_1d,
        ),
        Phase(
            "finetune",
            finetune_epochs,
            backbone_frozen=False,
            lr_head=lr_head,
            lr_backbone=lr_backbone,
            warmup_epochs=warmup_epochs,
            scheduled=True,
            weight_decay_exclude_1d=weight_decay_exclude_1d,
            layer_decay=layer_decay,
        ),
    ]
    return [phase for phase in phases if phase.epochs > 0]
