"""The trainer resumed from a last.pth in-process, on the tiny task of tests/trainers.py: the optimizer
and schedule it carries on with, and the resumes it refuses (kills mid-epoch, in
tests/reliability/test_trainer_faults.py)."""

from functools import partial

import pytest
import torch
from trainers import stop_after, stripes_trainer

from deepfake.engine.phases import plan_phases
from deepfake.errors import CheckpointError, ConfigError
from deepfake.tracking.checkpoint import load_checkpoint


def stopped_phase_state(tmp_path, phase):
    """What last.pth holds for a phase stopped after one optimizer step: (trainer, saved state)."""
    trainer = stripes_trainer(tmp_path, [phase])
    trainer._setup_phase(phase)
    trainer.model(torch.randn(4, 3, 32, 32)).sum().backward()
    trainer.optimizer.step()
    saved = {"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
             "scaler": trainer.scaler.state_dict()}  # fmt: skip
    return trainer, saved


@pytest.mark.parametrize("strict", [True, False], ids=["resume_strict", "lenient"])
def test_a_last_pth_with_the_old_two_group_layout_gets_the_clear_path(tmp_path, caplog, strict):
    (old,) = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4, weight_decay_exclude_1d=False)
    _, saved = stopped_phase_state(tmp_path / "old", old)
    assert [g["name"] for g in saved["optimizer"]["param_groups"]] == ["backbone", "head"]
    (phase,) = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4)
    resumed = stripes_trainer(tmp_path / "new", [phase])
    resumed.resume_strict, resumed._resume_from = strict, saved
    if strict:
        with pytest.raises(CheckpointError, match="cannot be loaded .*; resume_strict=true refuses to go on"):
            resumed._setup_phase(phase)
        return
    resumed._setup_phase(phase)
    assert any("with a fresh optimizer" in r.getMessage() for r in caplog.records)
    names = [g["name"] for g in resumed.optimizer.param_groups]
    assert names == ["backbone_no_decay", "backbone", "head_no_decay", "head"]
    assert resumed.state.not_exact


@pytest.mark.parametrize("layer_decay", [None, 0.5], ids=["weight_decay", "layer_decay"])
def test_a_last_pth_with_the_same_layout_resumes_exactly(tmp_path, layer_decay):
    (phase,) = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4, layer_decay=layer_decay)
    stopped, saved = stopped_phase_state(tmp_path / "a", phase)
    resumed = stripes_trainer(tmp_path / "b", [phase])
    resumed.resume_strict, resumed._resume_from = True, saved
    resumed._setup_phase(phase)
    assert resumed.state.not_exact is None
    loaded = resumed.optimizer.state_dict()
    assert loaded["param_groups"] == saved["optimizer"]["param_groups"]
    assert loaded["state"].keys() == saved["optimizer"]["state"].keys()
    for key, state in saved["optimizer"]["state"].items():
        assert all(torch.equal(loaded["state"][key][k], v) for k, v in state.items())
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in stopped.optimizer.param_groups]


def test_a_resume_at_a_phase_boundary_carries_the_loss_scale_on(tmp_path, monkeypatch):
    """last.pth at a phase's end holds no optimizer state, but the fp16 loss scale goes on."""
    import deepfake.engine.trainer as trainer_module

    # A scale that moves within the run (torch's default waits 2000 steps).
    monkeypatch.setattr(trainer_module, "make_grad_scaler",
                        lambda device, precision: torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=2))  # fmt: skip
    phases = plan_phases(2, 2, lr_head=1e-2, lr_backbone=1e-3, warmup_epochs=1)
    whole = stripes_trainer(tmp_path / "whole", phases, precision="16")
    whole.fit()
    stopped = stop_after(stripes_trainer(tmp_path / "run", phases, precision="16"), 6)  # 3 steps an epoch
    stopped.fit()
    stopped.close()
    assert stopped.stopped_early and (stopped.state.phase_index, stopped.state.batches_done) == (1, 0)

    resumed = stripes_trainer(tmp_path / "run", phases, precision="16")
    resumed.fit(load_checkpoint(tmp_path / "run" / "last.pth"))

    assert resumed.scaler.get_scale() == whole.scaler.get_scale() != 16.0
    assert all(
        torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values())
    )


def test_a_resume_with_more_epochs_follows_the_new_schedule_not_the_stopped_one(tmp_path):
    """phase.finetune_epochs=6 on resume: the cosine spans 6 epochs (later overrides win) instead of
    the stopped run's 2, whose scheduler state used to be loaded and left the lr at its floor."""
    stopped = stop_after(stripes_trainer(tmp_path, plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4)), 4)
    stopped.fit()
    stopped.close()
    (longer,) = plan_phases(0, 6, lr_head=1e-3, lr_backbone=1e-4)
    resumed = stripes_trainer(tmp_path, [longer])
    lrs = []
    step = resumed._optimizer_step
    resumed._optimizer_step = lambda: (lrs.append(resumed.optimizer.param_groups[-1]["lr"]), step())
    resumed.fit(load_checkpoint(tmp_path / "last.pth"))

    fresh = stripes_trainer(tmp_path / "fresh", [longer])
    fresh._setup_phase(longer)
    expected = []
    for phase_step in range(4, 18):  # 6 epochs x 3 steps, resumed after step 4
        fresh.scheduler.step_update(phase_step)
        expected.append(fresh.optimizer.param_groups[-1]["lr"])
    assert lrs == pytest.approx(expected)
    assert lrs[-1] > 1e-6  # still on the cosine, not at lr_min


def _stopped_in_finetune(tmp_path, head_epochs: int):
    """A run of `head_epochs` + 4 fine-tuning epochs stopped after its second fine-tuning epoch."""
    steps = (head_epochs + 2) * 3  # 3 steps an epoch
    stopped = stop_after(stripes_trainer(tmp_path, plan_phases(head_epochs, 4, lr_head=1e-3, lr_backbone=1e-4)), steps)
    stopped.fit()
    stopped.close()
    assert (stopped.state.epoch_in_phase, stopped.state.batches_done) == (2, 0)
    return load_checkpoint(tmp_path / "last.pth")


@pytest.mark.parametrize("finetune_epochs", [1, 0])
def test_a_resume_given_fewer_epochs_than_the_stopped_phase_trained_is_refused(tmp_path, finetune_epochs):
    """Fewer would never end the phase (it used to train on forever); none would skip its rest silently."""
    saved = _stopped_in_finetune(tmp_path, head_epochs=1)
    resumed = stripes_trainer(tmp_path, plan_phases(1, finetune_epochs, lr_head=1e-3, lr_backbone=1e-4))
    with pytest.raises(ConfigError, match=rf"stopped in phase finetune after 2 epoch\(s\) of it; "
                                          rf"phase.finetune_epochs={finetune_epochs} is fewer: resume with "
                                          r"phase.finetune_epochs=2 \(the phase ends now\) or more"):  # fmt: skip
        resumed.fit(saved)


def test_a_resume_given_exactly_the_epochs_trained_ends_the_phase_there(tmp_path):
    saved = _stopped_in_finetune(tmp_path, head_epochs=1)
    resumed = stripes_trainer(tmp_path, plan_phases(1, 2, lr_head=1e-3, lr_backbone=1e-4))
    resumed.fit(saved)
    assert (resumed.state.epoch, resumed.state.step, resumed.state.phase_index) == (3, 9, 2)  # nothing more trained
    assert all(torch.equal(a, b) for a, b in zip(saved["model"].values(), resumed.model.state_dict().values()))


def test_a_resume_without_the_head_phase_is_refused_and_with_it_ends_the_run(tmp_path):
    """phase.head_epochs=0 on resume left the head phase out of the plan: the saved phase index (1)
    pointed past it, and the run used to end without its last fine-tuning epochs. It would also make
    the run's config say no head epoch was trained: refused, naming the one it trained."""
    saved = _stopped_in_finetune(tmp_path, head_epochs=1)
    without = stripes_trainer(tmp_path, plan_phases(0, 4, lr_head=1e-3, lr_backbone=1e-4))
    with pytest.raises(ConfigError, match=r"resume with phase.head_epochs=1"):
        without.fit(saved)
    resumed = stripes_trainer(tmp_path, plan_phases(1, 4, lr_head=1e-3, lr_backbone=1e-4))
    resumed.fit(saved)
    assert (resumed.state.epoch, resumed.state.step, resumed.state.epoch_in_phase) == (5, 15, 0)


def test_a_resume_keeps_the_saved_moments_but_takes_this_runs_optimizer_settings(tmp_path):
    """``resume=... optimizer.weight_decay=0.05``: later overrides win over the stopped run's settings
    (load_state_dict alone would bring back the saved weight decay and betas)."""
    (phase,) = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4)
    _, saved = stopped_phase_state(tmp_path / "a", phase)
    assert {g["weight_decay"] for g in saved["optimizer"]["param_groups"]} == {0.0}
    resumed = stripes_trainer(tmp_path / "b", [phase])
    resumed.make_optimizer = partial(torch.optim.AdamW, weight_decay=0.05, betas=(0.8, 0.99))
    resumed.resume_strict, resumed._resume_from = True, saved
    resumed._setup_phase(phase)
    groups = {g["name"]: g for g in resumed.optimizer.param_groups}
    assert groups["backbone"]["weight_decay"] == groups["head"]["weight_decay"] == 0.05
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0  # norms and biases stay undecayed
    assert all(g["betas"] == (0.8, 0.99) for g in groups.values())
    loaded = resumed.optimizer.state_dict()["state"]
    for key, state in saved["optimizer"]["state"].items():
        assert all(torch.equal(loaded[key][k], v) for k, v in state.items())


@pytest.mark.parametrize(("batch_size", "accumulate"), [(8, 1), (16, 1), (16, 2)])
def test_an_epoch_stopped_part_way_resumes_only_under_the_batch_size_it_was_cut_at(tmp_path, batch_size, accumulate):
    """The resume skips the batches already trained: under another batch size it would skip other images,
    under another accumulation window cut the epoch's steps elsewhere (that one was accepted)."""
    (phase,) = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4)
    stopped = stop_after(stripes_trainer(tmp_path, [phase]), 1)  # one of the epoch's 3 steps
    stopped.fit()
    stopped.close()
    checkpoint = load_checkpoint(tmp_path / "last.pth")
    assert checkpoint["trainer_state"]["batches_done"] == 1
    resumed = stripes_trainer(tmp_path, [phase], batch_size=batch_size, accumulate_grad_batches=accumulate)
    if (batch_size, accumulate) == (16, 1):
        state, _ = resumed.check_resumable(checkpoint)
        assert (state.epoch, state.batches_done) == (0, 1)
        return
    with pytest.raises(CheckpointError, match=r"saved part-way through an epoch by 1 process\(es\) with "
                       r"dataset.batch_size=16 and train.accumulate_grad_batches=1; resume it with the same "
                       rf"\(now 1 with {batch_size} and {accumulate}\)"):  # fmt: skip
        resumed.check_resumable(checkpoint)


def test_the_damaged_images_met_before_a_stop_are_counted_after_the_resume(tmp_path):
    """The registry's damaged-image counts come from the trainer: a run stopped in its last epoch and
    resumed counted only the damaged images of the batches left."""
    evens = frozenset(range(0, 48, 2))
    (phase,) = plan_phases(0, 1, lr_head=1e-3, lr_backbone=1e-4)
    straight = stripes_trainer(tmp_path / "straight", [phase], damaged=evens)
    straight.fit()
    stopped = stop_after(stripes_trainer(tmp_path / "run", [phase], damaged=evens), 2)  # 2 of the 3 batches
    stopped.fit()
    stopped.close()
    resumed = stripes_trainer(tmp_path / "run", [phase], damaged=evens)
    resumed.fit(load_checkpoint(tmp_path / "run" / "last.pth"))
    assert resumed.damaged.counts() == straight.damaged.counts() == {"train": 24}


def test_a_stop_in_the_last_validation_is_a_stop_and_the_resume_has_nothing_left_to_train(tmp_path):
    """No epoch boundary follows the last validation: a signal there was swallowed, and the run went on
    to test and register (under submitit: never requeued, killed at its time limit)."""
    (phase,) = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4)
    trainer = stripes_trainer(tmp_path, [phase])
    end_epoch = trainer._end_epoch

    def signalled_in_the_last(*args, **kwargs):
        if trainer.state.epoch == 1:  # the second and last epoch's validation
            trainer.stop.signum = 15
        return end_epoch(*args, **kwargs)

    trainer._end_epoch = signalled_in_the_last
    state = trainer.fit()
    trainer.close()
    assert trainer.stopped_early and trainer.stop.signum == 15 and state.epoch == 2
    resumed = stripes_trainer(tmp_path, [phase])
    assert resumed.fit(load_checkpoint(tmp_path / "last.pth")).epoch == 2 and not resumed.stopped_early


def test_a_phase_that_ended_is_not_extended_by_a_resume_without_a_word(tmp_path):
    """Stopped just as its head phase ended, resumed with phase.head_epochs=2: it went straight on to
    fine-tuning, one head epoch trained while the run's config said two."""
    stopped = stop_after(stripes_trainer(tmp_path, plan_phases(1, 1, lr_head=1e-3, lr_backbone=1e-4)), 3)
    stopped.fit()  # 3 steps: the head epoch, then the stop at the boundary
    stopped.close()
    saved = load_checkpoint(tmp_path / "last.pth")
    assert (saved["phase"], saved["trainer_state"]["phase_epochs"]) == ("head", {"head": 1})
    longer = stripes_trainer(tmp_path, plan_phases(2, 1, lr_head=1e-3, lr_backbone=1e-4))
    with pytest.raises(ConfigError, match=r"ended phase head after 1 epoch\(s\); phase.head_epochs=2 asks for more"):
        longer.fit(saved)
    same = stripes_trainer(tmp_path, plan_phases(1, 1, lr_head=1e-3, lr_backbone=1e-4))
    assert same.fit(load_checkpoint(tmp_path / "last.pth")).phase_epochs == {"head": 1, "finetune": 1}


def test_a_resume_in_a_later_phase_refuses_another_length_for_an_earlier_ended_one(tmp_path):
    """Stopped in fine-tuning after one head epoch, resumed with phase.head_epochs=2 (or 0): accepted
    without a word, the head still one epoch while the run's config and registry entry said otherwise."""
    stopped = stop_after(stripes_trainer(tmp_path, plan_phases(1, 2, lr_head=1e-3, lr_backbone=1e-4)), 4)
    stopped.fit()  # the head epoch (3 steps), then one fine-tuning step and the stop
    stopped.close()
    saved = load_checkpoint(tmp_path / "last.pth")
    assert saved["phase"] == "finetune" and saved["trainer_state"]["phase_epochs"] == {"head": 1}
    for head_epochs, why in ((2, "asks for more"), (0, "is fewer than it trained")):
        other = stripes_trainer(tmp_path, plan_phases(head_epochs, 2, lr_head=1e-3, lr_backbone=1e-4))
        with pytest.raises(
            ConfigError, match=rf"ended phase head after 1 epoch\(s\); phase.head_epochs={head_epochs} {why}"
        ):
            other.fit(saved)
    same = stripes_trainer(tmp_path, plan_phases(1, 2, lr_head=1e-3, lr_backbone=1e-4))
    assert same.fit(load_checkpoint(tmp_path / "last.pth")).phase_epochs == {"head": 1, "finetune": 2}


def test_a_last_pth_of_an_older_version_counts_its_stopped_phase_from_its_own_epochs(tmp_path):
    """Without phase_epochs the count began at the resume: a head phase of 2 epochs ended as {"head": 1},
    and a later stop at its boundary refused the run's own phase.head_epochs=2."""
    phases = plan_phases(2, 1, lr_head=1e-3, lr_backbone=1e-4)
    stopped = stop_after(stripes_trainer(tmp_path, phases), 4)  # the first step of the second head epoch
    stopped.fit()
    stopped.close()
    older = load_checkpoint(tmp_path / "last.pth")
    del older["trainer_state"]["phase_epochs"]
    resumed = stripes_trainer(tmp_path, phases)
    assert resumed.fit(older).phase_epochs == {"head": 2, "finetune": 1}


def test_a_run_stopped_between_two_loss_points_logs_once_resumed_the_points_of_a_run_never_stopped(tmp_path):
    """A stop logged train/loss at the stop's step and the resume the rest of the interval: two points
    (and lr/*) where the uninterrupted run has one. Under accumulation the stop's step could also be
    the step of the next point, which the resume then left out."""
    from deepfake.tracking.loggers import Tracker

    class Recorder(Tracker):
        def __init__(self):
            self.logged = []

        def log_metrics(self, metrics, step):
            self.logged.append((step, metrics))

    phases = plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4)
    # 12 batches of 4 an epoch, a step every 2, a point every 3 batches: at batch 9 the step is 4, as at
    # the stop after batch 8.
    options = {"batch_size": 4, "accumulate_grad_batches": 2, "log_every_n_batches": 3}
    straight = Recorder()
    stripes_trainer(tmp_path / "straight", phases, loggers=[straight], **options).fit()

    before, after = Recorder(), Recorder()
    stopped = stop_after(stripes_trainer(tmp_path / "run", phases, loggers=[before], **options), 4)
    stopped.fit()
    stopped.close()
    assert stopped.stopped_early and stopped.state.batches_done == 8
    resumed = stripes_trainer(tmp_path / "run", phases, loggers=[after], **options)
    resumed.fit(load_checkpoint(tmp_path / "run" / "last.pth"))
    resumed.close()

    def losses(recorder):
        return [(step, metrics["train/loss"]) for step, metrics in recorder.logged if "train/loss" in metrics]

    assert [step for step, _ in losses(straight)] == [1, 3, 4, 6, 7, 9, 10, 12]  # batches 3, 6, 9, 12 of each epoch
    assert losses(before) + losses(after) == losses(straight)  # the very values: same sums, same order
