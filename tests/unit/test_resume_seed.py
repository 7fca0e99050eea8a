"""A resume under another seed: the seed orders (and augments) every epoch's images, so an epoch stopped
part-way cannot go on under another one (its rest would skip the first images of the new order, not the
ones trained on), and between epochs it goes on, recorded as no longer exact."""

from __future__ import annotations

import pytest
from trainers import stop_after, stripes_trainer

from deepfake.engine.phases import plan_phases
from deepfake.errors import CheckpointError
from deepfake.tracking.checkpoint import load_checkpoint

PHASES = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4)


def _stopped(run_dir, *, steps: int) -> dict:
    """A run of seed 0 stopped (as on SIGTERM) after ``steps`` optimizer steps (3 an epoch): its last.pth."""
    trainer = stop_after(stripes_trainer(run_dir, PHASES, seed=0), steps)
    trainer.fit()
    trainer.close()
    return load_checkpoint(run_dir / "last.pth")


def test_an_epoch_stopped_part_way_is_refused_under_another_seed(tmp_path):
    checkpoint = _stopped(tmp_path, steps=1)
    assert checkpoint["trainer_state"]["batches_done"] == 1 and checkpoint["loader"]["seed"] == 0
    stripes_trainer(tmp_path, PHASES, seed=0).check_resumable(checkpoint)
    with pytest.raises(CheckpointError, match=r"last.pth was saved part-way through an epoch with seed=0, .*; "
                       r"resume it with seed=0 \(now 7\)$") as refused:  # fmt: skip
        stripes_trainer(tmp_path, PHASES, seed=7).check_resumable(checkpoint)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("seed", [0, 7])
def test_between_epochs_another_seed_goes_on_recorded_as_inexact(tmp_path, seed):
    _stopped(tmp_path, steps=3)  # at the end of epoch 1: stopped at the next epoch's start
    resumed = stripes_trainer(tmp_path, PHASES, seed=seed)
    resumed.fit(resume=load_checkpoint(tmp_path / "last.pth"))
    resumed.close()
    assert resumed.state.epoch == 2
    if seed == 0:
        assert resumed.state.not_exact is None
    else:
        assert resumed.state.not_exact.startswith("trained with seed=0, resumed with seed=7: the epochs left")
    assert load_checkpoint(tmp_path / "last.pth")["trainer_state"]["not_exact"] == resumed.state.not_exact


def test_another_seed_with_no_epoch_left_changes_nothing(tmp_path):
    """A run resumed once its training is over (to test and register it) trains nothing under the new seed."""
    stripes_trainer(tmp_path, PHASES, seed=0).fit()
    resumed = stripes_trainer(tmp_path, PHASES, seed=7)
    resumed.fit(resume=load_checkpoint(tmp_path / "last.pth"))
    assert resumed.state.not_exact is None
