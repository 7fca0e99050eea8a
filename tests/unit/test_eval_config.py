"""conf/eval/ as the tasks read it: every mistake is a ConfigError naming the key, found before training."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import deepfake.tasks  # noqa: F401  (registers the run_stamp resolver)
from deepfake.errors import ConfigError
from deepfake.tasks.scoring import (
    check_eval_settings,
    checkpoint_rule,
    eval_sets,
    perturbations,
    settings_not_applied,
    summary_settings,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_eval(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"paths.root_dir={tmp_path}", *overrides])


def test_defaults(tmp_path):
    cfg = compose_eval(tmp_path)
    assert (cfg.eval.threshold_policy, cfg.eval.threshold, cfg.eval.calibrate) == ("eer", None, "none")
    assert "threshold" not in cfg.train  # evaluation settings live in one place
    settings = summary_settings(cfg)
    assert (settings.bootstrap, settings.confidence, settings.ece_bins, settings.seed) == (1000, 0.95, 15, 42)
    assert [p.name for p in perturbations(cfg)] == ["none", "jpeg_90", "jpeg_70", "jpeg_50", "jpeg_30", "blur_1",
                                                    "blur_2", "blur_3", "rescale_0.5", "rescale_0.25", "noise_0.02",
                                                    "noise_0.05"]  # fmt: skip
    assert eval_sets(cfg) == [("test", f"{tmp_path}/data/synthetic/64px/test.csv", None)]


def test_two_extra_sets_as_a_path_and_as_a_mapping(tmp_path):
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "b.csv").write_text("x\n")
    cfg = compose_eval(
        tmp_path, f"eval.sets={{other:'{tmp_path}/a.csv',far:{{csv:'{tmp_path}/b.csv',root_dir:/images}}}}"
    )
    check_eval_settings(cfg)
    assert eval_sets(cfg)[1:] == [("other", f"{tmp_path}/a.csv", None), ("far", f"{tmp_path}/b.csv", "/images")]


@pytest.mark.parametrize(("overrides", "message"), [
    (["eval.threshold_policy=fpr@2"], "eval.threshold_policy='fpr@2'"),
    (["eval.threshold_policy=fixed"], "eval.threshold_policy=fixed needs"),
    (["eval.threshold_policy=fixed", "eval.threshold=7"], "eval.threshold=7"),
    (["eval.calibrate=platt"], "eval.calibrate='platt'"),
    (["eval.bootstrap=-1"], "eval.bootstrap=-1"),
    (["eval.confidence=95"], "eval.confidence=95"),
    (["eval.tpr_at_fpr=[0.01,1.5]"], "eval.tpr_at_fpr"),
    (["eval.ece_bins=0"], "eval.ece_bins=0"),
    (["eval.perturbations.blur=[-1]"], "eval.perturbations.blur=-1"),
    (["eval.sets={test:/x.csv}"], "eval.sets.test"),
    (["eval.sets={other:/no/such.csv}"], "eval.sets.other: /no/such.csv does not exist"),
    (["eval.sets={other:{path:/x.csv}}"], "eval.sets.other="),
])  # fmt: skip
def test_mistakes_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        check_eval_settings(compose_eval(tmp_path, *overrides))


def test_an_eval_threshold_equal_to_the_stored_one_is_the_checkpoints_operating_point(tmp_path):
    """The README's `eval.threshold_policy=fixed eval.threshold=0.5` training stores 0.5: its own test
    reported that as an eval.threshold override, and the registry then refused a retest at 0.5."""
    stored = {"threshold": 0.5, "threshold_policy": "fixed", "temperature": 1.0}
    same = checkpoint_rule(stored, compose_eval(tmp_path, "eval.threshold_policy=fixed", "eval.threshold=0.5"))
    assert (same.source, same.threshold, same.policy) == ("checkpoint", 0.5, "fixed")
    other = checkpoint_rule(stored, compose_eval(tmp_path, "eval.threshold=0.3"))
    assert (other.source, other.threshold, other.stored_threshold) == ("eval.threshold", 0.3, 0.5)
    with pytest.raises(ConfigError, match="eval.threshold=1.5"):
        checkpoint_rule(stored, compose_eval(tmp_path, "eval.threshold=1.5"))


def test_policy_and_calibration_given_to_a_test_are_named_when_they_differ_from_the_stored_point(tmp_path):
    rule = checkpoint_rule({"threshold": 0.4, "threshold_policy": "fpr@0.01", "temperature": 1.0},
                           compose_eval(tmp_path))  # fmt: skip
    given = {"eval.threshold_policy", "eval.calibrate"}
    cfg = compose_eval(tmp_path, "eval.threshold_policy=fpr@1e-2", "eval.calibrate=none")
    assert settings_not_applied(cfg, rule, given) == []  # the same choice, spelled another way
    cfg = compose_eval(tmp_path, "eval.threshold_policy=eer", "eval.calibrate=temperature")
    assert settings_not_applied(cfg, rule, given) == [
        "eval.threshold_policy=eer (stored: fpr@0.01)", "eval.calibrate=temperature (stored: none)"]  # fmt: skip
    assert settings_not_applied(cfg, rule, set()) == []  # defaults nobody asked for are not ignored requests
