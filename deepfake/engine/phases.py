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


def steps_per_epoch(batches_per_epoch: int, accumulate: int) -> int:
    # The last, partial accumulation window of an epoch still makes an optimizer step.
    return math.ceil(batches_per_epoch / accumulate)


def plan_phases(
    head_epochs: int, finetune_epochs: int, lr_head: float, lr_backbone: float, warmup_epochs: float = 0.0
) -> list[Phase]:
    """The phases that actually run; a phase of 0 epochs is left out."""
    if head_epochs < 0 or finetune_epochs < 0:
        raise ConfigError(f"phase.head_epochs={head_epochs}, phase.finetune_epochs={finetune_epochs}: epochs must be >= 0")
    phases = [
        Phase("head", head_epochs, backbone_frozen=True, lr_head=lr_head, lr_backbone=0.0),
        Phase(
            "finetune",
            finetune_epochs,
            backbone_frozen=False,
            lr_head=lr_head,
            lr_backbone=lr_backbone,
            warmup_epochs=warmup_epochs,
            scheduled=True,
        ),
    ]
    return [phase for phase in phases if phase.epochs > 0]
