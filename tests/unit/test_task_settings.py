"""Settings as the tasks read them: numbers that are not numbers, single names, output folders."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR
from omegaconf import OmegaConf

from deepfake.errors import ConfigError
from deepfake.tasks import session
from deepfake.tasks.predict import _output_file
from deepfake.tasks.scoring import summary_settings
from deepfake.tasks.values import number, positive_int


@pytest.mark.parametrize(("value", "kind", "message"), [
    ("all", int, "predict.top_k=all is not an integer"), ("2.5", int, "is not an integer"),
    (2.5, int, "predict.top_k=2.5 is not an integer"),  # int() made it 2, silently
    ("high", float, "predict.top_k=high is not a finite number"), (None, float, "is not a finite number"),
    (True, int, "predict.top_k=True is not an integer"),  # YAML's true: int() made it 1
    (float("nan"), float, "is not a finite number"), (float("inf"), float, "is not a finite number"),
    ("inf", int, "is not an integer"),
])  # fmt: skip
def test_a_number_that_is_not_one_is_a_config_error_naming_the_key(value, kind, message):
    with pytest.raises(ConfigError, match=message):
        number(value, "predict.top_k", kind)


def test_positive_int_names_the_key_for_text_and_for_zero():
    assert positive_int("8", "dataset.batch_size") == 8
    with pytest.raises(ConfigError, match="dataset.batch_size=all is not an integer"):
        positive_int("all", "dataset.batch_size")
    with pytest.raises(ConfigError, match="must be a positive integer"):
        positive_int(0, "dataset.batch_size")


@pytest.mark.parametrize(
    ("key", "value"), [("bootstrap", "many"), ("confidence", "high"), ("tpr_at_fpr", [0.01, "low"])]
)
def test_eval_settings_that_are_not_numbers_are_named(key, value):
    settings = {"bootstrap": 100, "confidence": 0.95, "tpr_at_fpr": [0.01], "ece_bins": 15}
    cfg = OmegaConf.create({"seed": 0, "eval": {**settings, key: value}})
    with pytest.raises(ConfigError, match=f"eval.{key}="):
        summary_settings(cfg)


def test_a_single_run_name_is_one_name_not_its_letters():
    assert session.text_list("run1") == ["run1"]
    assert session.text_list(OmegaConf.create(["a", "b"])) == ["a", "b"]
    assert session.text_list(None) == []
    assert session.text_list(5) == ["5"]  # tags=5 was a TypeError traceback
    with pytest.raises(ConfigError, match=r"must be a list of names"):
        session.text_list(OmegaConf.create([["a"], "b"]))


def test_eval_sets_given_as_text_is_named():
    from deepfake.tasks.scoring import eval_sets

    cfg = OmegaConf.create({"dataset": {"test_csv": "t.csv"}, "eval": {"sets": "abc"}})
    with pytest.raises(ConfigError, match=r"eval.sets='abc' must be a mapping"):
        eval_sets(cfg)


@pytest.mark.parametrize(("output", "expected"), [
    ("out/", "out/predictions.csv"), ("out", "out/predictions.csv"), ("out/mine.csv", "out/mine.csv"),
])  # fmt: skip
def test_predict_output_is_a_file_or_a_folder_made_for_predictions_csv(tmp_path, output, expected):
    path = _output_file(f"{tmp_path}/{output}")
    assert path == tmp_path / expected
    assert path.parent.is_dir() or output.endswith(".csv")


def test_predict_refuses_a_model_without_a_threshold_unless_one_is_given():
    """No silent 0.5 where task=test refuses: a training stopped before choosing one stored none."""
    from deepfake.errors import CheckpointError
    from deepfake.inference import OperatingPoint

    stopped = OperatingPoint.of({})
    assert stopped.threshold is None
    with pytest.raises(CheckpointError, match="^best.pth holds no decision threshold.*predict.threshold=<p_fake>$"):
        stopped.rule(None, "predict.threshold", "best.pth")
    with pytest.raises(
        CheckpointError,
        match="^last.pth is a last.pth, which holds no decision threshold: its run's "
        "is in best.pth beside it; use that, or pass predict.threshold=<p_fake>$",
    ):
        stopped.rule(None, "predict.threshold", "last.pth", latest_epoch="a last.pth")
    given = stopped.rule(0.7, "predict.threshold", "best.pth")
    assert (given.threshold, given.source, given.stored_threshold) == (0.7, "predict.threshold", None)
    chosen = OperatingPoint.of({"threshold": 0.25, "threshold_policy": "eer", "temperature": 2.0})
    stored = chosen.rule(None, "predict.threshold", "best.pth")
    assert (stored.threshold, stored.temperature, stored.source, stored.policy) == (0.25, 2.0, "checkpoint", "eer")
    for bad in (True, 1.5, "high"):  # YAML's true was float(True) = 1.0 for eval.threshold: nothing called fake
        with pytest.raises(ConfigError, match=f"predict.threshold={bad!r} must be a p\\(fake\\) between 0 and 1"):
            chosen.rule(bad, "predict.threshold", "best.pth")


@pytest.mark.parametrize("bad", [True, 1.5, -0.1, "half"])
def test_eval_threshold_outside_0_1_is_refused_before_training_whatever_the_policy(bad):
    from deepfake.tasks.scoring import check_eval_settings

    cfg = OmegaConf.create({"eval": {"threshold_policy": "eer", "threshold": bad}})
    with pytest.raises(ConfigError, match=f"eval.threshold={bad!r} must be a p"):
        check_eval_settings(cfg)


def test_predict_keeps_p_fake_in_float64_so_a_score_at_the_threshold_is_called_as_task_test_calls_it():
    import numpy as np

    from deepfake.engine.evaluate import Predictions, fake_probability
    from deepfake.inference.predictions import p_fake_per_item

    logits = np.array([0.3, -2.997, 2.0])  # p(fake) of -2.997 rounds down in float32
    threshold = float(fake_probability(logits[1:2])[0])  # task=test's threshold: a validation score itself
    preds = Predictions(indices=np.array([0, 2, 3]), targets=np.zeros(3), logits=logits)
    probs = p_fake_per_item(4, preds, 1.0)
    assert probs.dtype == np.float64 and np.isnan(probs[1])
    assert probs[2] >= threshold  # called fake, as task=test calls it
    assert float(np.float32(probs[2])) < threshold  # float32 scores (as before) called it real


def test_a_loader_setting_is_named_by_the_group_it_came_from():
    """predict.num_workers=-1 used to be reported as dataset.num_workers."""
    import torch

    from deepfake.tasks import data_setup

    for key, value in (("num_workers", -1), ("batch_size", "all")):
        settings = OmegaConf.create({"num_workers": 0, "batch_size": 4, key: value})
        with pytest.raises(ConfigError, match=f"predict.{key}={value}"):
            data_setup.make_loader(list(range(4)), settings, device=torch.device("cpu"), group="predict")


@pytest.mark.parametrize(("dataset", "fix"), [
    ({"batches_dir": "batches"}, r"make the batches first \(python scripts/make_batches.py --n-batches K"),
    ({"csv_dir": "140k"}, r"download the dataset \(README: The Kaggle download\) and point dataset.csv_dir"),
    ({}, "fix the path"),
])  # fmt: skip
def test_a_missing_split_csv_is_named_with_what_usually_makes_it(tmp_path, dataset, fix):
    from deepfake.errors import DataError
    from deepfake.tasks.data_setup import check_split_paths

    cfg = OmegaConf.create({"train_csv": str(tmp_path / "train.csv"), "root_dir": str(tmp_path), **dataset})
    with pytest.raises(DataError, match=rf"dataset.train_csv={tmp_path / 'train.csv'}: CSV file not found; {fix}"):
        check_split_paths(cfg, "train_csv")


@pytest.mark.parametrize(("overrides", "refused"), [
    (["task=prune", "prune.apply=no"], "prune.apply=no"),  # it deleted the checkpoints it was to list
    (["train.do_test=off"], "train.do_test=off"), (["train.audit=yes"], "train.audit=yes"),
    (["experiment=smoke", "deterministic=N"], "deterministic=N"),
    (["train.do_test='false'"], "train.do_test=false"),  # quoted: text too
    # a typo is text too: each fast-path switch that takes true or false
    (["optimizer.fused=flase"], "optimizer.fused=flase"), (["optimizer=sgd", "optimizer.fused=x"], "optimizer.fused=x"),
    (["train.background_checkpoints=maybe"], "train.background_checkpoints=maybe"),
    (["deterministic=flase"], "deterministic=flase"), (["train.do_test=ture"], "train.do_test=ture"),
    (["train.compile=no"], "train.compile=no"),
    (["name=no", "tags=[on]", "train.do_test=false", "prune.apply=true"], None),  # text settings keep their words
    (["deterministic=True", "train.do_test=False", "optimizer.fused=true", "train.background_checkpoints=false",
      "backbone=timm", "backbone.name=flase", "name=maybe", "train.compile=aot_eager",
      "train.audit=${deterministic}"], None),
])  # fmt: skip
def test_a_true_false_setting_given_as_a_word_is_refused(overrides, refused):
    """Hydra reads yes/no/on/off, and any typo, as text, which every `if` takes as true."""
    from hydra import compose, initialize_config_dir

    from deepfake.tasks.flags import check_flags

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
        if refused is None:
            check_flags(cfg, overrides, "config")
            return
        with pytest.raises(ConfigError) as error:
            check_flags(cfg, overrides, "config")
    assert str(error.value).startswith(f"{refused} is not true or false; this setting takes true or false")
    if refused.split("=")[1] in ("flase", "x", "maybe", "ture"):  # values.flag's line: the same for every typo
        assert str(error.value) == f"{refused} is not true or false; this setting takes true or false"


def test_each_predictions_file_has_its_own_metrics_and_overlays_beside_it(tmp_path):
    """predict.cam clears the overlays of the output it replaces: a.csv's run must not clear b.csv's."""
    from deepfake.tasks.predict import metrics_file, overlays_dir

    assert (metrics_file(tmp_path / "predictions.csv"), overlays_dir(tmp_path / "predictions.csv")) == (
        tmp_path / "metrics_predict.json", tmp_path / "cam")  # fmt: skip
    assert {overlays_dir(tmp_path / "a.csv"), overlays_dir(tmp_path / "b.csv")} == {
        tmp_path / "a.cam",
        tmp_path / "b.cam",
    }
    assert metrics_file(tmp_path / "a.csv") == tmp_path / "a.metrics.json"


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.weight_decay=abc", r"optimizer \(.*weight_decay=abc.*\) cannot be built"),
    ("scheduler.lr_min=abc", r"scheduler \(lr_min=abc, .*\) cannot be built: '>=' not supported"),
    # timm asserts lr_min >= 0 with no message: the message names the scheduler class
    ("scheduler.lr_min=-1", r"scheduler \(lr_min=-1, .*\) cannot be built: AssertionError in timm"),
    ("scheduler.warmup_lr_init=low", r"scheduler \(.*warmup_lr_init=low.*\) cannot be built"),
    ("+scheduler.cycle_limt=2", r"scheduler \(.*cycle_limt=2\) cannot be built: .*unexpected keyword"),
])  # fmt: skip
def test_an_optimizer_or_scheduler_setting_it_cannot_use_is_one_line_before_training(override, message):
    """A scheduler typo ran the whole image scan, then ended in timm's traceback at the first phase."""
    import torch
    from hydra import compose, initialize_config_dir

    from deepfake.tasks.trainer_options import trainer_options

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[override])
    with pytest.raises(ConfigError, match=message):
        trainer_options(cfg, torch.device("cpu"), torch.nn.Linear(2, 1))


def test_the_true_false_check_composes_the_users_own_presets_too(tmp_path):
    """With a text setting on the command line (paths.root_dir=...), the check composes the defaults
    again: without the job's hydra.searchpath a preset of the user's own was not found there, and every
    job of a sweep over such presets failed as a bug ("Could not find 'experiment/...'")."""
    from hydra import compose, initialize_config_dir

    from deepfake.tasks.flags import check_flags

    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "mine.yaml").write_text("# @package _global_\nseed: 5\n")
    searchpath = [f"hydra.searchpath=[file://{presets.parent}]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides, refused in ((["experiment=mine", f"paths.root_dir={tmp_path}"], None),
                                   (["experiment=mine", "optimizer.fused=flase"], "optimizer.fused=flase")):  # fmt: skip
            cfg = compose("config", overrides=[*searchpath, *overrides])
            assert cfg.seed == 5
            if refused is None:
                check_flags(cfg, overrides, "config", composing=searchpath)
                continue
            with pytest.raises(ConfigError, match=f"^{refused} is not true or false"):
                check_flags(cfg, overrides, "config", composing=searchpath)
