"""The pre-flight of what a training run writes at its end: registry, models dir, disk space."""

from __future__ import annotations

import shutil
from functools import partial

import pytest
import torch
from timm.utils import ModelEmaV3
from trainers import stripes_trainer

from deepfake.engine.phases import plan_phases
from deepfake.errors import ConfigError, UserError
from deepfake.models import create_detector
from deepfake.tasks import preflight
from deepfake.tasks.preflight import check_checkpoint_space, check_free_space, check_registry
from deepfake.tracking.registry import Registry


@pytest.fixture(scope="module")
def model():
    return create_detector("test_resnet")


def _registry(models_dir):
    return Registry(models_dir / "model_metadata.json", models_dir / "best_model.pth")


def test_a_usable_registry_and_models_dir_pass(tmp_path, model):
    check_registry(_registry(tmp_path / "models"), "run", tmp_path / "run")
    check_checkpoint_space(tmp_path, model, torch.optim.AdamW, ema=True)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_metadata.json.lock"]


def test_a_corrupt_registry_is_named(tmp_path, model):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model_metadata.json").write_text('{"version": 1, "runs": [')
    with pytest.raises(UserError, match="model_metadata.json is not valid JSON"):
        check_registry(_registry(tmp_path / "models"), "run", tmp_path / "run")


# Tests run as root, for whom a chmod'ed folder stays writable: a models dir that is a file, or
# lies under one, cannot be written by anyone.
@pytest.mark.parametrize("where", ["models", "a_file/models"])
def test_a_models_dir_that_cannot_be_written_names_the_key(tmp_path, model, where):
    (tmp_path / where.split("/")[0]).write_text("a file, not a folder")
    with pytest.raises(ConfigError) as refused:
        check_registry(_registry(tmp_path / where), "run", tmp_path / "run")
    assert "cannot be written" in str(refused.value) and "paths.models_dir" in str(refused.value)
    assert str(tmp_path / "models" if where == "models" else tmp_path / where) in str(refused.value)


def test_a_run_name_the_registry_holds_for_another_run_dir_is_refused_before_training(tmp_path):
    """a/dup and b/dup both register as "dup": the second replaced the first's entry, and best_run then
    named a model best_model.pth does not hold."""
    registry = _registry(tmp_path / "models")
    registry.record_failure({"run_name": "dup", "run_dir": str(tmp_path / "a" / "dup")}, error="stopped")
    before = (tmp_path / "models" / "model_metadata.json").read_text()
    check_registry(registry, "dup", tmp_path / "a" / "dup")  # the same run dir: a resume
    check_registry(registry, "other", tmp_path / "b" / "other")
    with pytest.raises(UserError, match=rf"already holds a run named dup from {tmp_path / 'a' / 'dup'}; this one "
                       rf"\({tmp_path / 'b' / 'dup'}\) would replace its entry: give hydra.run.dir"):  # fmt: skip
        check_registry(registry, "dup", tmp_path / "b" / "dup")
    with pytest.raises(UserError, match="already holds a run named dup"):  # and at the end, under the lock
        registry.record_failure({"run_name": "dup", "run_dir": str(tmp_path / "b" / "dup")}, error="failed")
    assert (tmp_path / "models" / "model_metadata.json").read_text() == before


def test_too_little_disk_space_is_said_in_mib(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    check_free_space(tmp_path, 1, "two checkpoints")
    with pytest.raises(ConfigError, match=r"MiB free, but two checkpoints need .* MiB; free some disk space"):
        check_free_space(tmp_path, 2 * free + 2**30, "two checkpoints")


def _mid_phase_checkpoints(run_dir, make_optimizer, ema: bool) -> int:
    """best.pth + twice last.pth (the old one, and its replacement written beside it) of a run stopped
    in its fine-tuning phase, whose last.pth holds the optimizer state: the most its checkpoints take."""
    trainer = stripes_trainer(run_dir, plan_phases(0, 2, lr_head=1e-3, lr_backbone=1e-4),
                              ema=partial(ModelEmaV3, decay=0.99) if ema else None)  # fmt: skip
    trainer.make_optimizer = make_optimizer
    step = trainer._optimizer_step

    def stepping():
        step()
        if trainer.state.step == 3:  # the end of epoch 1 of 2: stopped as the next one starts
            trainer.stop.signum = 15

    trainer._optimizer_step = stepping
    trainer.fit()
    trainer.close()
    return (run_dir / "best.pth").stat().st_size + 2 * (run_dir / "last.pth").stat().st_size


@pytest.mark.parametrize(
    ("optimizer", "ema"),
    [(partial(torch.optim.AdamW, weight_decay=0.01), False), (partial(torch.optim.AdamW, weight_decay=0.01), True),
     (partial(torch.optim.SGD, momentum=0.9), False)],
    ids=["adamw", "adamw_ema", "sgd"],
)  # fmt: skip
def test_the_room_asked_for_is_what_the_checkpoints_take_at_their_peak(tmp_path, monkeypatch, optimizer, ema):
    """It asked for two copies of the weights (85 MiB for a run that needed 250 MiB and died at epoch 2 on
    a full disk): the optimizer state in last.pth, the moving average and the copy an atomic write makes
    were left out."""
    model = create_detector("test_resnet")
    peak = _mid_phase_checkpoints(tmp_path / "run", optimizer, ema)
    assert peak <= preflight.checkpoint_peak_bytes(model, optimizer, ema=ema) <= 1.1 * peak

    def free(space: int):
        monkeypatch.setattr(preflight.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(0, 0, space))

    free(peak - 1)
    with pytest.raises(ConfigError, match=r"but best.pth, last.pth and the last.pth written to replace it need"):
        check_checkpoint_space(tmp_path / "new", model, optimizer, ema=ema)
    # A resumed run's own checkpoints already take their part of it.
    free(preflight.checkpoint_peak_bytes(model, optimizer, ema=ema) - peak // 2)
    check_checkpoint_space(tmp_path / "run", model, optimizer, ema=ema)


def test_a_bad_backbone_setting_is_not_blamed_on_the_image_size():
    """+backbone.drop_rate=abc failed the forward pass and was reported as an img_size the backbone refuses."""
    from deepfake.errors import ConfigError
    from deepfake.models import create_detector
    from deepfake.tasks.preflight import check_input_size

    check_input_size(create_detector("test_resnet"), 32, "test_resnet")
    with pytest.raises(ConfigError, match="backbone test_resnet cannot score an image even at its own size .*"
                       "check the backbone.\\* settings"):  # fmt: skip
        check_input_size(create_detector("test_resnet", drop_rate="abc"), 32, "test_resnet")
    with pytest.raises(ConfigError, match="dataset.img_size=33 does not fit backbone test_vit"):
        check_input_size(create_detector("test_vit"), 33, "test_vit")


def test_an_optimizer_that_steps_only_on_a_gpu_is_taken_as_adamw_by_the_disk_check():
    """The probe steps the run's optimizer on a CPU tensor: AdamW(capturable=True), legitimate on a GPU,
    raised there, and the run ended "with a bug" before training."""
    assert preflight.optimizer_state_per_weight(partial(torch.optim.AdamW, capturable=True)) == 2.0
    assert preflight.optimizer_state_per_weight(partial(torch.optim.SGD, lr=0.1, momentum=0.9)) == 1.0
