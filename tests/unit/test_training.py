"""Phase freezing, the fine-tuning schedule, and the trainer's fit, checkpoints and scoring on a tiny
in-memory task (tests/trainers.py)."""

import csv
import math
from functools import partial

import pytest
import torch
from trainers import Stripes, stripes_trainer, tiny_model

from deepfake.engine.loaders import train_loader
from deepfake.engine.phases import plan_phases, steps_per_epoch
from deepfake.engine.trainer import METRICS_FIELDS
from deepfake.errors import ConfigError
from deepfake.models import create_detector, detector_from_checkpoint
from deepfake.models.param_groups import param_groups, set_backbone_frozen, set_train_mode
from deepfake.tracking.checkpoint import load_checkpoint


def test_frozen_backbone_gets_no_gradients_and_keeps_batchnorm_statistics():
    model = tiny_model()
    set_backbone_frozen(model, True)
    set_train_mode(model, backbone_frozen=True)
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    loss = model(torch.randn(4, 3, 32, 32)).sum()
    loss.backward()
    head = model.get_classifier()
    for name, param in model.named_parameters():
        is_head = any(param is p for p in head.parameters())
        assert param.requires_grad == is_head, name
        assert (param.grad is not None) == is_head, name
    for key, before in bn_before.items():
        assert torch.equal(model.state_dict()[key], before), key
    # Unfrozen, the same forward pass moves the statistics.
    set_backbone_frozen(model, False)
    set_train_mode(model, backbone_frozen=False)
    model(torch.randn(4, 3, 32, 32))
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in bn_before.items())


def test_param_groups_split_head_and_backbone():
    model = tiny_model()
    groups = param_groups(model, lr_backbone=1e-5, lr_head=1e-3, backbone_frozen=False)
    assert [g["name"] for g in groups] == ["backbone_no_decay", "backbone", "head_no_decay", "head"]
    assert [g["lr"] for g in groups] == [1e-5, 1e-5, 1e-3, 1e-3]
    n_total = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_total
    assert [g["name"] for g in param_groups(model, 1e-5, 1e-3, backbone_frozen=True)] == ["head_no_decay", "head"]


def test_plan_phases_skips_empty_phases_and_rejects_negative_epochs():
    assert [p.name for p in plan_phases(2, 3, 1e-3, 1e-4)] == ["head", "finetune"]
    assert [p.name for p in plan_phases(0, 3, 1e-3, 1e-4)] == ["finetune"]
    assert [p.name for p in plan_phases(2, 0, 1e-3, 1e-4)] == ["head"]
    with pytest.raises(ConfigError, match="phase.head_epochs=-1"):
        plan_phases(-1, 3, 1e-3, 1e-4)
    with pytest.raises(ConfigError, match="^phase.head_epochs=0, phase.finetune_epochs=0: nothing to train"):
        plan_phases(0, 0, 1e-3, 1e-4)
    head, finetune = plan_phases(2, 3, 1e-3, 1e-4, layer_decay=0.75)
    assert (head.layer_decay, finetune.layer_decay) == (None, 0.75)  # only where the backbone trains
    with pytest.raises(ConfigError, match="phase.layer_decay=0"):
        plan_phases(2, 3, 1e-3, 1e-4, layer_decay=0)
    assert steps_per_epoch(10, 3) == 4  # the partial last window still steps


def test_finetune_schedule_warms_up_linearly_then_follows_the_cosine(tmp_path):
    # 48 images / batch 16 = 3 steps per epoch; 1 warmup epoch (3 steps) then 2 cosine epochs (6 steps).
    trainer = stripes_trainer(tmp_path, plan_phases(0, 3, lr_head=1e-3, lr_backbone=1e-4, warmup_epochs=1))
    seen = []
    original_step = trainer._optimizer_step

    def record_step():
        seen.append({g["name"]: g["lr"] for g in trainer.optimizer.param_groups})
        original_step()

    trainer._optimizer_step = record_step
    trainer.fit()
    assert len(seen) == 9
    for step, lrs in enumerate(seen):
        assert lrs["head"] == pytest.approx(warmup_cosine(step, 1e-3), rel=1e-6), step
        assert lrs["backbone"] == pytest.approx(warmup_cosine(step, 1e-4), rel=1e-6), step


def warmup_cosine(step, base):
    """The rate at a step of 3 warmup steps from 1e-6 then 6 cosine steps down to 1e-6."""
    if step < 3:
        return 1e-6 + step * (base - 1e-6) / 3
    t = (step - 3) / 6
    return 1e-6 + 0.5 * (base - 1e-6) * (1 + math.cos(math.pi * t))


def test_layer_decay_scales_each_backbone_layers_schedule(tmp_path):
    phases = plan_phases(0, 3, lr_head=1e-3, lr_backbone=1e-4, warmup_epochs=1, layer_decay=0.5)
    trainer = stripes_trainer(tmp_path, phases)
    seen = []
    original_step = trainer._optimizer_step

    def record_step():
        seen.append([(g["name"], g["lr"], g.get("lr_scale")) for g in trainer.optimizer.param_groups])
        original_step()

    trainer._optimizer_step = record_step
    trainer.fit()
    assert len(seen) == 9
    assert {scale for _, _, scale in seen[0]} == {None, 0.5, 0.25, 0.125, 0.0625, 0.03125}
    for step, groups in enumerate(seen):
        for name, lr, scale in groups:
            # timm's scheduler scales the whole schedule, warmup and floor included, by the layer's lr_scale.
            base = 1e-3 if name.startswith("head") else 1e-4
            assert lr == pytest.approx(warmup_cosine(step, base) * (scale or 1.0), rel=1e-6), (step, name)
    # The logged rate of each part is its base rate, as the epoch starts (steps 0, 3, 6).
    rows = list(csv.DictReader((tmp_path / "metrics_log.csv").open()))
    assert [float(r["lr_backbone"]) for r in rows] == pytest.approx([warmup_cosine(s, 1e-4) for s in (0, 3, 6)])
    assert [float(r["lr_head"]) for r in rows] == pytest.approx([warmup_cosine(s, 1e-3) for s in (0, 3, 6)])


def test_two_phase_fit_trains_head_first_then_everything(tmp_path):
    trainer = stripes_trainer(tmp_path, plan_phases(1, 2, lr_head=1e-2, lr_backbone=1e-3))
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    head_keys = {f"fc.{k}" for k in trainer.model.get_classifier().state_dict()}
    snapshots = []
    original_end = trainer._end_epoch

    def snapshot_after_epoch(*args, **kwargs):
        row = original_end(*args, **kwargs)
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return row

    trainer._end_epoch = snapshot_after_epoch
    state = trainer.fit()
    after_head = snapshots[0]
    for key, value in initial.items():
        changed = not torch.equal(after_head[key], value)
        if key in head_keys:
            assert changed, key
        elif value.is_floating_point():
            assert not changed, f"{key} moved during the head-only phase"
    assert not torch.equal(snapshots[-1]["conv1.0.weight"], initial["conv1.0.weight"])
    assert (state.epoch, state.phase_index) == (3, 2)
    assert state.step == 3 * 3

    rows = (tmp_path / "metrics_log.csv").read_text().splitlines()
    assert rows[0].split(",") == METRICS_FIELDS
    assert [r.split(",")[0] for r in rows[1:]] == ["head", "finetune", "finetune"]
    assert state.best_auc is not None and state.best_auc > 0.9  # the stripes are easy


def test_best_checkpoint_rebuilds_the_same_model_without_any_config(tmp_path):
    trainer = stripes_trainer(tmp_path, plan_phases(1, 1, lr_head=1e-2, lr_backbone=1e-3))
    state = trainer.fit()
    best = load_checkpoint(tmp_path / "best.pth")
    assert best["epoch"] == state.best_epoch
    assert best["model_spec"] == {"name": "test_resnet", "kwargs": {}}
    assert best["preprocess"]["img_size"] == 32 and len(best["preprocess"]["mean"]) == 3
    assert best["threshold"] == 0.5 and best["labels"]["real_label"] == 1
    rebuilt = detector_from_checkpoint(best).eval()
    trainer.model.load_state_dict(best["model"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trainer.model.eval()(x))

    last = load_checkpoint(tmp_path / "last.pth")
    assert last["trainer_state"]["epoch"] == 2 and last["trainer_state"]["phase_index"] == 2
    assert set(last["rng"]) >= {"python", "numpy", "torch"}


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    from deepfake.errors import TrainingError

    trainer = stripes_trainer(tmp_path, plan_phases(1, 0, lr_head=1e-2, lr_backbone=0.0))
    dataset = trainer.train_loader.dataset.dataset
    dataset.images[0, 0, 0, 0] = float("nan")
    trainer.train_loader = train_loader(dataset, 48, seed=0)
    with pytest.raises(TrainingError, match="non-finite training loss"):
        trainer.fit()
    assert not (tmp_path / "last.pth").exists()


def test_non_finite_validation_scores_stop_with_a_clear_error_not_sklearns_traceback(tmp_path):
    """fp16 can overflow in scoring alone; roc_auc_score would raise 'Input contains NaN'."""
    from deepfake.errors import TrainingError

    trainer = stripes_trainer(tmp_path, plan_phases(1, 0, lr_head=1e-2, lr_backbone=0.0))
    trainer.val_loader.dataset.images[3] = float("inf")
    with pytest.raises(TrainingError, match=r"non-finite validation scores \(1 of 32\) at epoch 1; .*nothing saved"):
        trainer.fit()
    assert not (tmp_path / "best.pth").exists() and not (tmp_path / "last.pth").exists()


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext"])
def test_a_frozen_backbone_still_applies_the_heads_dropout(name):
    """ResNet applies drop_rate functionally; ViT (head_drop) and ConvNeXt (head.drop) hold it as a
    module outside get_classifier(), which the frozen backbone's eval mode switched off."""
    torch.manual_seed(0)
    model = create_detector(name, drop_rate=0.5)
    set_backbone_frozen(model, True)
    set_train_mode(model, backbone_frozen=True)
    size = model.preprocess.get("img_size", 32) if name == "test_vit" else 32
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        outputs = {tuple(model(x).flatten().tolist()) for _ in range(5)}
    assert len(outputs) > 1  # dropout before the head is live
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase | torch.nn.LayerNorm)]
    assert frozen and not any(m.training for m in frozen)  # the frozen backbone itself stays in eval mode


def test_label_smoothing_matches_timms_binary_cross_entropy_and_bounds_the_training_loss(tmp_path):
    from timm.loss import BinaryCrossEntropy

    from deepfake.engine.trainer import smooth_targets

    logits, targets = torch.randn(64), (torch.arange(64) % 2).float()
    ours = torch.nn.functional.binary_cross_entropy_with_logits(logits, smooth_targets(targets, 0.2))
    timms = BinaryCrossEntropy(smoothing=0.2, smooth_dense=True)(logits.view(-1, 1), targets.view(-1, 1))
    assert torch.allclose(ours, timms)
    # Two-class one-hot smoothing (timm's sparse path) gives the fake column the same target.
    assert smooth_targets(torch.tensor([0.0, 1.0]), 0.2).tolist() == pytest.approx([0.1, 0.9])

    # With smoothing s no prediction can push the loss below the targets' own entropy H(s/2).
    trainer = stripes_trainer(tmp_path, plan_phases(0, 2, lr_head=5e-2, lr_backbone=1e-2), label_smoothing=0.5)
    trainer.fit()
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    losses = [float(row["train_loss"]) for row in csv.DictReader((tmp_path / "metrics_log.csv").open())]
    assert all(loss >= entropy - 1e-6 for loss in losses), losses
    plain = stripes_trainer(tmp_path / "plain", plan_phases(0, 2, lr_head=5e-2, lr_backbone=1e-2))
    plain.fit()
    unsmoothed = [float(row["train_loss"]) for row in csv.DictReader((tmp_path / "plain" / "metrics_log.csv").open())]
    assert unsmoothed[-1] < entropy  # the bound binds: without smoothing the same run goes below it
    with pytest.raises(ConfigError, match="train.label_smoothing=1.0 must be in"):
        stripes_trainer(tmp_path / "bad", plan_phases(1, 0, lr_head=1e-2, lr_backbone=0.0), label_smoothing=1.0)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())  # nothing half-begun


def test_the_moving_average_is_what_validation_scores_and_best_pth_keeps(tmp_path):
    from timm.utils import ModelEmaV3

    from deepfake.engine.evaluate import predict

    trainer = stripes_trainer(tmp_path, plan_phases(1, 2, lr_head=1e-2, lr_backbone=1e-3),
                           ema=partial(ModelEmaV3, decay=0.9, use_warmup=False))  # fmt: skip
    # Each epoch's raw and averaged weights as validation is about to score them.
    raw, averaged = {}, {}
    end_epoch = trainer._end_epoch

    def snapshot_then_end(phase, seconds, progress):
        epoch = trainer.state.epoch + 1
        raw[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        averaged[epoch] = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
        return end_epoch(phase, seconds, progress)

    trainer._end_epoch = snapshot_then_end
    state = trainer.fit()
    best, last = load_checkpoint(tmp_path / "best.pth"), load_checkpoint(tmp_path / "last.pth")
    assert best["ema"] is True and last["ema_model"] is not None
    # best.pth keeps the average of its epoch, not the raw weights; last.pth keeps both.
    assert all(torch.equal(best["model"][k], averaged[state.best_epoch][k]) for k in best["model"])
    assert not all(torch.equal(best["model"][k], raw[state.best_epoch][k]) for k in best["model"])
    assert all(torch.equal(last["model"][k], raw[state.epoch][k]) for k in last["model"])
    # Every epoch's logged validation loss is the average's, not the raw weights'.
    rows = list(csv.DictReader((tmp_path / "metrics_log.csv").open()))
    model = tiny_model()
    for epoch, row in enumerate(rows, start=1):
        model.load_state_dict(averaged[epoch])
        assert predict(model, trainer.val_loader, torch.device("cpu"), "32").loss() == pytest.approx(
            float(row["val_loss"]), abs=1e-5
        ), epoch
        model.load_state_dict(raw[epoch])
        assert predict(model, trainer.val_loader, torch.device("cpu"), "32").loss() != pytest.approx(
            float(row["val_loss"]), abs=1e-5
        ), epoch


def test_scoring_copies_the_logits_to_the_host_once_per_pass_not_per_batch(monkeypatch):
    """A copy to the host per batch makes the host wait for each forward pass on a GPU. No GPU here,
    and a CPU tensor's .cpu() costs nothing, so the copies are counted: one for the whole pass."""
    from deepfake.engine.evaluate import predict

    model = tiny_model().eval()
    data = Stripes(80, 3)
    loader = torch.utils.data.DataLoader(data, batch_size=16)  # five batches
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(self.shape) or real_cpu(self, *a, **k))
    preds = predict(model, loader, torch.device("cpu"), "32")
    monkeypatch.undo()
    assert copies == [torch.Size([80])]
    with torch.no_grad():
        expected = model(data.images).squeeze(1)
    assert preds.indices.tolist() == list(range(80))
    assert torch.allclose(torch.from_numpy(preds.logits), expected, atol=1e-5)


def test_scoring_uint8_images_normalised_on_the_device_gives_the_float_pipelines_logits_bit_for_bit(tmp_path):
    """Scoring loaders serve uint8 images and ``to_input`` normalises each batch on the device: the
    same logits as images normalised one by one in the loader; a uint8 batch without it is refused."""
    from PIL import Image

    from deepfake.data.image_files import ImageFileDataset
    from deepfake.engine.evaluate import predict
    from deepfake.tasks.data_setup import eval_transform, model_input

    paths = []
    for number in range(10):
        pixels = torch.randint(0, 256, (40, 48, 3), generator=torch.Generator().manual_seed(number), dtype=torch.uint8)
        paths.append(tmp_path / f"{number}.png")
        Image.fromarray(pixels.numpy()).save(paths[-1])
    model = tiny_model().eval()
    preprocess = {**model.preprocess, "img_size": 32}
    cpu = torch.device("cpu")

    def loader(normalise):
        dataset = ImageFileDataset([str(p) for p in paths], eval_transform(preprocess, normalise=normalise))
        return torch.utils.data.DataLoader(dataset, batch_size=4)

    floats = predict(model, loader(True), cpu, "32")
    uint8 = predict(model, loader(False), cpu, "32", to_input=model_input(preprocess, cpu))
    assert next(iter(loader(False)))["image"].dtype == torch.uint8
    assert (uint8.logits == floats.logits).all() and (uint8.indices == floats.indices).all()
    with pytest.raises(TypeError, match="uint8 images; pass to_input"):
        predict(model, loader(False), cpu, "32")


def test_best_pth_and_the_threshold_predictions_are_those_of_the_best_epoch_not_the_last(tmp_path, monkeypatch):
    """Validation AUC 0.8, 0.9, 0.7: best.pth must hold epoch 2's weights, and the predictions the
    operating point is chosen on must be epoch 2's (a trainer saving every epoch as best passed before)."""
    import deepfake.engine.epoch_end as epoch_end

    scripted = iter([0.8, 0.9, 0.7])
    monkeypatch.setattr(epoch_end, "auc_or_none", lambda targets, scores: next(scripted))
    trainer = stripes_trainer(tmp_path, plan_phases(1, 2, lr_head=1e-2, lr_backbone=1e-3))
    weights, predictions = [], []
    original_end, original_validate = trainer._end_epoch, trainer.validate

    def validate(*args, **kwargs):
        predictions.append(original_validate(*args, **kwargs))
        return predictions[-1]

    def end_epoch(*args, **kwargs):
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return original_end(*args, **kwargs)

    trainer.validate, trainer._end_epoch = validate, end_epoch
    state = trainer.fit()

    assert (state.best_epoch, state.best_auc) == (2, 0.9)
    best = load_checkpoint(tmp_path / "best.pth")
    assert best["epoch"] == 2 and best["val_metrics"]["val_auc"] == 0.9
    assert all(torch.equal(best["model"][k], weights[1][k]) for k in weights[1])
    assert not all(torch.equal(best["model"][k], weights[2][k]) for k in weights[2])  # the last epoch moved on
    assert trainer.best_predictions is predictions[1]
    rows = list(csv.DictReader((tmp_path / "metrics_log.csv").open()))
    assert [float(row["val_auc"]) for row in rows] == [0.8, 0.9, 0.7]


def test_train_loss_is_logged_once_per_optimizer_step_when_logging_outpaces_accumulation(tmp_path):
    """log_every_n_batches=1 with 3 batches a step logged train/loss three times at each step (twice at
    step 0, before any step), each a third of the window's loss."""
    from deepfake.tracking.loggers import Tracker

    class Recorder(Tracker):
        def __init__(self):
            self.logged = []

        def log_metrics(self, metrics, step):
            if "train/loss" in metrics:
                self.logged.append((step, metrics["train/loss"]))

    recorder = Recorder()
    trainer = stripes_trainer(tmp_path, plan_phases(1, 1, lr_head=1e-2, lr_backbone=1e-3), loggers=[recorder],
                              accumulate_grad_batches=3, log_every_n_batches=1)  # fmt: skip
    trainer.fit()
    trainer.close()
    rows = list(csv.DictReader((tmp_path / "metrics_log.csv").open()))
    assert [step for step, _ in recorder.logged] == [1, 2]  # 3 batches of 16: one step an epoch
    assert [loss for _, loss in recorder.logged] == pytest.approx([float(row["train_loss"]) for row in rows], rel=1e-5)


def test_the_learning_rates_logged_at_a_step_are_those_the_step_was_taken_with(tmp_path):
    """lr/* were read after the scheduler had moved on: each point was the next step's rate, so a
    phase's peak never showed and its last point was a rate no step used."""
    from deepfake.tracking.loggers import Tracker

    class Recorder(Tracker):
        def __init__(self):
            self.lrs = {}

        def log_metrics(self, metrics, step):
            if "lr/head" in metrics:
                self.lrs[step] = (metrics["lr/head"], metrics["lr/backbone"])

    recorder = Recorder()
    trainer = stripes_trainer(tmp_path, plan_phases(1, 2, lr_head=1e-2, lr_backbone=1e-3, warmup_epochs=0),
                              loggers=[recorder], log_every_n_batches=1)  # fmt: skip
    trainer.fit()
    trainer.close()
    rows = list(csv.DictReader((tmp_path / "metrics_log.csv").open()))
    assert sorted(recorder.lrs) == list(range(1, 10))  # 3 epochs of 3 steps
    # metrics_log.csv's rates are each epoch's first step's: steps 1, 4 and 7.
    for first_step, row in zip((1, 4, 7), rows):
        assert recorder.lrs[first_step] == pytest.approx((float(row["lr_head"]), float(row["lr_backbone"])), rel=1e-6)
    assert recorder.lrs[4][0] == pytest.approx(1e-2)  # fine-tuning's first step at its peak
