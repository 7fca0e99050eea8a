"""phase.warmup_epochs against the phase it warms up: fine-tuning, the one phase with a schedule. A
warm-up as long as the phase (or longer) trained it all on the ramp, below the rates asked for, with
only timm's "Cosine annealing scheduler will have no effect" to say so."""

from __future__ import annotations

import pytest
from conftest import run_main
from helpers import error_lines

from deepfake.engine.phases import plan_phases
from deepfake.errors import ConfigError


@pytest.mark.parametrize("warmup", [1, 5, 1.5])
def test_a_warmup_of_the_whole_finetuning_phase_is_refused(warmup):
    with pytest.raises(ConfigError, match=rf"^phase.warmup_epochs={warmup:g} must be fewer than "
                       r"phase.finetune_epochs=1 \(the phase it warms up\).*lower phase.warmup_epochs"):  # fmt: skip
        plan_phases(1, 1, lr_head=1e-3, lr_backbone=1e-4, warmup_epochs=warmup)


def test_a_warmup_shorter_than_the_phase_or_of_no_phase_passes():
    (finetune,) = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4, warmup_epochs=1.5)
    assert finetune.warmup_epochs == 1.5
    # phase=head_only keeps two_phase's warmup_epochs=1: no phase is warmed up, nothing to refuse.
    (head,) = plan_phases(3, 0, lr_head=1e-3, lr_backbone=1e-4, warmup_epochs=1)
    assert head.name == "head" and not head.scheduled


def test_the_smoke_run_with_a_longer_warmup_ends_in_one_line(tmp_path):
    result = run_main(tmp_path, "experiment=smoke", "phase.finetune_epochs=1", "phase.warmup_epochs=5",
                      "paths.data_dir=" + str(tmp_path / "data"), check=False)  # fmt: skip
    assert result.returncode != 0
    assert error_lines(result) == [
        "ERROR phase.warmup_epochs=5 must be fewer than phase.finetune_epochs=1 (the phase it warms up): it would take "
        "the whole phase, whose rates never reach phase.lr_head and phase.lr_backbone; lower phase.warmup_epochs "
        "(0 for none)"
    ]
    assert not (tmp_path / "data").exists()  # refused before the embedded set was generated
