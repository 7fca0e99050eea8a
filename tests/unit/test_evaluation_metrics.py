"""Operating points, calibration and bootstrap intervals against values computed by hand."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from deepfake.engine.evaluate import fake_probability
from deepfake.engine.metrics import classification_metrics
from deepfake.errors import CheckpointError, ConfigError
from deepfake.evaluation.bootstrap import bootstrap_intervals, weighted_metrics
from deepfake.evaluation.calibration import brier_score, expected_calibration_error, fit_temperature
from deepfake.evaluation.decision import decision_rule
from deepfake.evaluation.operating_point import choose_threshold, fit_operating_point, parse_policy, tpr_at_fpr

# 4 reals and 4 fakes; ranked high to low: .9F .8F .7F .6R .4F .3R .2R .1R
TARGETS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


def test_tpr_at_fpr_by_hand():
    # No real may be called fake: only .9 .8 .7 are above every real -> TPR 3/4 at threshold .7.
    assert tpr_at_fpr(TARGETS, PROBS, 0.0) == {"max_fpr": 0.0, "tpr": 0.75, "fpr": 0.0, "threshold": 0.7}
    # One real in four may be: going down to .4 catches every fake and flags only the .6 real.
    assert tpr_at_fpr(TARGETS, PROBS, 0.25) == {"max_fpr": 0.25, "tpr": 1.0, "fpr": 0.25, "threshold": 0.4}
    assert tpr_at_fpr(TARGETS, PROBS, 0.49)["threshold"] == 0.4  # .3 would flag a second real (FPR .5)


def test_threshold_of_each_policy_by_hand():
    # EER: at .6, one real in four is called fake (FPR .25) and one fake in four missed (FNR .25).
    assert choose_threshold(TARGETS, PROBS, "eer") == 0.6
    assert choose_threshold(TARGETS, PROBS, "fpr@0.01") == 0.7
    assert choose_threshold(TARGETS, PROBS, "fpr@0.25") == 0.4
    assert choose_threshold(TARGETS, PROBS, "fixed", 0.35) == 0.35


def test_nothing_called_fake_is_a_finite_threshold_above_every_score():
    # Every real outscores every fake: calling nothing fake is the only point with FPR 0.
    threshold = choose_threshold(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 1.0]), "fpr@0.1")
    assert threshold > 1.0 and math.isfinite(threshold)


@pytest.mark.parametrize("policy", ["fpr", "fpr@1", "fpr@-0.1", "fpr@x", "youden", "fixed"])
def test_bad_policies_are_config_errors_naming_the_key(policy):
    with pytest.raises(ConfigError, match="eval.threshold"):
        parse_policy(policy, None)


def test_operating_point_stores_the_validation_figures_at_the_threshold():
    stored = fit_operating_point(TARGETS, np.log(PROBS / (1 - PROBS)), policy="eer", fixed_threshold=None,
                                 calibrate=False, ece_bins=15)  # fmt: skip
    assert stored["threshold"] == pytest.approx(0.6) and stored["threshold_policy"] == "eer"
    assert stored["temperature"] == 1.0
    point = stored["operating_point"]
    assert point["accuracy"] == pytest.approx(6 / 8)
    assert (point["real_accuracy"], point["fake_accuracy"], point["fpr"]) == pytest.approx((0.75, 0.75, 0.25))
    assert (point["n_real"], point["n_fake"], point["chosen_on"]) == (4, 4, "validation")


def test_ece_with_15_equal_width_bins_by_hand():
    targets = np.array([0, 1, 1, 0])
    probs = np.array([0.05, 0.15, 0.90, 0.92])
    # Bins of width 1/15: .05 alone (gap .05), .15 alone (gap .85), .90 and .92 together
    # (mean p .91, half fake: gap .41, weight 2 of 4).
    assert expected_calibration_error(targets, probs, 15) == pytest.approx((0.05 + 0.85 + 2 * 0.41) / 4)
    # p(fake) = 1 falls in the last bin, not outside the histogram.
    assert expected_calibration_error(np.array([1, 1]), np.array([1.0, 0.95]), 15) == pytest.approx(0.025)


def test_brier_by_hand():
    targets = np.array([0, 1, 1, 0])
    probs = np.array([0.05, 0.15, 0.90, 0.92])
    assert brier_score(targets, probs) == pytest.approx((0.05**2 + 0.85**2 + 0.1**2 + 0.92**2) / 4)


def test_temperature_with_a_known_answer():
    # Every logit is 2 and 3 of 4 images are fake: the log loss is least where sigmoid(2 / T) = 3/4,
    # i.e. T = 2 / ln 3.
    logits = np.full(8, 2.0)
    targets = np.array([1, 1, 1, 0, 1, 1, 1, 0])
    temperature = fit_temperature(logits, targets)
    assert temperature == pytest.approx(2 / math.log(3), rel=1e-4)
    assert fake_probability(logits, temperature) == pytest.approx(np.full(8, 0.75), rel=1e-4)


def test_temperature_recovers_the_one_that_made_overconfident_scores():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 40_000)
    targets = (rng.uniform(size=true_logits.size) < fake_probability(true_logits)).astype(int)
    assert fit_temperature(3.0 * true_logits, targets) == pytest.approx(3.0, rel=0.05)


def test_decision_rule_stored_override_and_missing():
    checkpoint = {"threshold": 0.42, "threshold_policy": "fpr@0.01", "temperature": 2.0, "run_name": "r"}
    stored = decision_rule(checkpoint)
    assert (stored.threshold, stored.temperature, stored.source, stored.policy) == (0.42, 2.0, "checkpoint", "fpr@0.01")
    assert stored.p_fake(np.array([2.0])) == pytest.approx([1 / (1 + math.exp(-1.0))])
    override = decision_rule(checkpoint, 0.7)
    assert (override.threshold, override.source, override.stored_threshold) == (0.7, "eval.threshold", 0.42)
    assert decision_rule({"threshold": 0.5}).temperature == 1.0  # absent = 1
    with pytest.raises(CheckpointError, match="eval.threshold=<p_fake>"):
        decision_rule({"run_name": "stopped early"})
    with pytest.raises(ConfigError, match="eval.threshold"):
        decision_rule(checkpoint, 1.5)


def test_vectorised_metrics_equal_the_metrics_of_the_repeated_images():
    rng = np.random.default_rng(1)
    targets = np.repeat([0, 1], 50)
    probs = np.round(rng.uniform(size=100) * 0.6 + 0.4 * targets, 2)  # rounded: many tied scores
    counts = rng.integers(0, 4, size=(5, 100))
    counts[:, 0] += 1  # every row keeps a real and a fake
    counts[:, -1] += 1
    values = weighted_metrics(targets, probs, 0.5, counts)
    for row, row_counts in enumerate(counts):
        t, p = np.repeat(targets, row_counts), np.repeat(probs, row_counts)
        expected = classification_metrics(t, p, 0.5)
        for name in ("auc", "ap", "eer", "accuracy"):
            assert values[name][row] == pytest.approx(expected[name], abs=1e-12), name


def test_intervals_are_seeded_and_none_without_both_classes():
    rng = np.random.default_rng(2)
    targets = np.repeat([0, 1], 30)
    probs = rng.uniform(size=60) * 0.5 + 0.3 * targets
    first = bootstrap_intervals(targets, probs, 0.5, n_resamples=200, seed=7)
    assert first == bootstrap_intervals(targets, probs, 0.5, n_resamples=200, seed=7)
    assert first != bootstrap_intervals(targets, probs, 0.5, n_resamples=200, seed=8)
    point = classification_metrics(targets, probs, 0.5)
    for name, (low, high) in first.items():
        assert low < point[name] < high, name
    assert bootstrap_intervals(np.ones(5), probs[:5], 0.5, n_resamples=100, seed=0)["auc"] is None
    assert bootstrap_intervals(targets, probs, 0.5, n_resamples=0, seed=0)["auc"] is None


def test_auc_interval_covers_the_true_auc_at_close_to_the_nominal_rate():
    # Reals ~ N(0, 1), fakes ~ N(1, 1): the true AUC is P(fake score > real score) = Phi(1 / sqrt 2).
    true_auc = norm.cdf(1 / math.sqrt(2))
    rng = np.random.default_rng(3)
    trials, covered = 300, 0
    for trial in range(trials):
        targets = np.repeat([0, 1], 80)
        scores = rng.normal(size=160) + targets
        low, high = bootstrap_intervals(targets, scores, 0.5, n_resamples=300, seed=trial)["auc"]
        covered += low <= true_auc <= high
    # 95% nominal; 300 trials put the binomial standard error near 1.3 points.
    assert 0.90 <= covered / trials <= 0.99


def test_ranking_figures_rank_by_logits_where_p_fake_saturates():
    """In float64 every logit / T above ~37 is p = 1.0: ranked by p those images tie. A calibration
    on perfectly separated validation drives T to its floor (0.05), so it is common there."""
    from sklearn import metrics as skm

    from deepfake.evaluation.decision import DecisionRule, check_threshold
    from deepfake.evaluation.operating_point import fit_operating_point
    from deepfake.evaluation.summary import SummarySettings, summarise

    rng = np.random.default_rng(0)
    val_targets = np.repeat([0, 1], 50)
    val_logits = np.r_[rng.uniform(-12, -3, 50), rng.uniform(3, 12, 50)]
    chosen = fit_operating_point(val_targets, val_logits, policy="fpr@0.01", fixed_threshold=None, calibrate=True,
                                 ece_bins=15)  # fmt: skip
    assert chosen["temperature"] < 0.1 and check_threshold(chosen["threshold"]) <= 1.0
    assert chosen["operating_point"]["auc"] == 1.0

    targets = np.repeat([0, 1], 20)
    logits = np.r_[rng.uniform(-12, -3, 19), 4.0, np.linspace(3, 12, 20)]  # one real among the fakes
    rule = DecisionRule(chosen["threshold"], chosen["temperature"], "checkpoint", "fpr@0.01", chosen["threshold"])
    report = summarise(targets, logits, rule, SummarySettings(bootstrap=200, tpr_at_fpr=(0.01,)))
    assert report["auc"] == pytest.approx(skm.roc_auc_score(targets, logits))
    assert report["ap"] == pytest.approx(skm.average_precision_score(targets, logits))
    assert report["tpr_at_fpr"][0]["tpr"] == 0.85  # the 17 fakes above the real at 4.0; ranked by p, 0.0
    low, high = report["intervals"]["auc"]
    assert low <= report["auc"] <= high


def test_a_call_nothing_fake_threshold_stays_a_p_fake_when_the_top_scores_saturate():
    from deepfake.evaluation.decision import check_threshold
    from deepfake.evaluation.operating_point import fit_operating_point

    targets, logits = np.array([0, 1, 1, 0]), np.array([40.0, 39.0, 38.0, -3.0])  # a real on top: fpr@0 calls none
    chosen = fit_operating_point(targets, logits, policy="fpr@0.0", fixed_threshold=None, calibrate=False, ece_bins=5)
    assert check_threshold(chosen["threshold"]) == 1.0  # was 1.0000000000000002, refused as eval.threshold


def test_every_confusion_count_is_readable_on_its_cell():
    """imshow's colours span the smallest count to the largest: the lowest cell is white, so its text
    must be black (half the largest count put white text on it)."""
    from deepfake.evaluation.plots import cell_text_colours

    assert cell_text_colours(np.array([[64, 36], [53, 47]])).tolist() == [["white", "black"], ["white", "black"]]
    assert cell_text_colours(np.array([[90, 10], [5, 95]])).tolist() == [["white", "black"], ["black", "white"]]


def test_the_robustness_axis_shows_an_auc_below_chance():
    from deepfake.evaluation.plots import auc_limits

    assert auc_limits([0.98, 0.62, None]) == (0.4, 1.01)
    low, _ = auc_limits([0.98, 0.45, 0.30])  # 0.30 used to fall below a fixed 0.4
    assert low < 0.30


def test_a_tpr_at_fpr_met_only_by_calling_nothing_fake_gives_a_threshold_that_calls_nothing_fake():
    """The top image is real and the budget below one real in three: the ROC's first point. Its threshold
    came back as sigmoid(just above the top logit), which rounds to the top image's own p(fake), and
    called it fake: fpr 1/3 at the threshold reported with fpr 0."""
    from deepfake.evaluation.decision import DecisionRule
    from deepfake.evaluation.operating_point import rates_at
    from deepfake.evaluation.summary import SummarySettings, summarise

    targets, logits = np.array([0, 0, 0, 1, 1, 1]), np.array([3.0, -1.0, -2.0, 2.0, 1.0, 0.5])
    rule = DecisionRule(threshold=0.5, temperature=1.0, source="checkpoint", policy="eer", stored_threshold=0.5)
    [row] = summarise(targets, logits, rule, SummarySettings(bootstrap=0, tpr_at_fpr=(0.01,)))["tpr_at_fpr"]
    assert (row["tpr"], row["fpr"]) == (0.0, 0.0)
    assert rates_at(targets, rule.p_fake(logits), row["threshold"])["fpr"] == 0.0 and row["threshold"] <= 1.0


def test_the_call_nothing_fake_threshold_holds_under_a_temperature():
    """The threshold one float above the top (real) logit, divided by the temperature afterwards,
    rounded back onto that logit / T here, and its p(fake) called the top real fake (fpr 1/2)."""
    from deepfake.evaluation.decision import DecisionRule
    from deepfake.evaluation.operating_point import rates_at
    from deepfake.evaluation.summary import SummarySettings, summarise

    targets, logits = np.array([0, 0, 1, 1]), np.array([1.9602583646774292, 0.3, -0.5, 0.8])
    rule = DecisionRule(threshold=0.5, temperature=0.7265393144098728, source="checkpoint", policy="eer",
                        stored_threshold=0.5)  # fmt: skip
    [row] = summarise(targets, logits, rule, SummarySettings(bootstrap=0, tpr_at_fpr=(0.01,)))["tpr_at_fpr"]
    assert (row["tpr"], row["fpr"]) == (0.0, 0.0)
    assert rates_at(targets, rule.p_fake(logits), row["threshold"])["fpr"] == 0.0


def test_summarise_reports_accuracy_at_half_and_tpr_thresholds_as_p_fake_by_hand():
    """At temperature 2 the logits are 2 * logit(PROBS), so every p(fake) is one of PROBS again."""
    from deepfake.evaluation.calibration import calibration_figures
    from deepfake.evaluation.decision import DecisionRule
    from deepfake.evaluation.summary import SummarySettings, summarise

    logits = 2 * np.log(PROBS / (1 - PROBS))
    rule = DecisionRule(threshold=0.65, temperature=2.0, source="checkpoint", policy="eer", stored_threshold=0.65)
    report = summarise(TARGETS, logits, rule, SummarySettings(bootstrap=0, tpr_at_fpr=(0.0, 0.25), ece_bins=15))
    # At .65 only the .4 fake is missed (7/8); at 0.5 the .6 real is called fake too (6/8).
    assert report["accuracy"] == pytest.approx(7 / 8) and report["accuracy_at_0.5"] == pytest.approx(6 / 8)
    # The thresholds of tpr_at_fpr are read off the logits' ROC and given back as p(fake): .7 and .4.
    assert [row["threshold"] for row in report["tpr_at_fpr"]] == pytest.approx([0.7, 0.4])
    assert [row["tpr"] for row in report["tpr_at_fpr"]] == [0.75, 1.0]
    raw = 1 / (1 + np.exp(-logits))  # temperature 1: the overconfident scores
    figures = calibration_figures(TARGETS, logits, 2.0, 15)
    assert figures["ece"] == pytest.approx(expected_calibration_error(TARGETS, PROBS, 15))
    assert figures["ece_uncalibrated"] == pytest.approx(expected_calibration_error(TARGETS, raw, 15))
    assert figures["brier_uncalibrated"] == pytest.approx(brier_score(TARGETS, raw))
    assert figures["ece"] != pytest.approx(figures["ece_uncalibrated"])
    assert set(report["intervals"].values()) == {None}  # bootstrap=0: no intervals


def test_the_roc_and_pr_plots_quote_the_auc_and_ap_of_the_logits_as_the_metrics_do(monkeypatch):
    """Past a logit of ~37 every p(fake) is 1.0: ranked by p, the real at 40 ties the fakes at 50 and 60,
    and the plots' AUC and AP fell below the 1.0 that metrics_test.json quotes beside them."""
    from deepfake.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "figure_png", lambda fig: figures.append(fig) or b"")
    targets, logits = np.array([0, 1, 1, 0, 1]), np.array([40.0, 50.0, 60.0, -1.0, 45.0])
    probs = 1 / (1 + np.exp(-logits))
    assert len(set(probs[[0, 1, 2, 4]])) == 1  # saturated: one value for the real at 40 and the fakes
    plots.roc_png(targets, logits, probs, 0.5, [])
    plots.pr_png(targets, logits)
    legends = [text.get_text() for fig in figures for text in fig.axes[0].get_legend().get_texts()]
    assert "AUC 1.0000" in legends and "AP 1.0000" in legends


def test_the_generalisation_plot_says_n_a_for_an_undefined_figure_and_draws_a_real_zero(monkeypatch):
    """A set of reals only has no AUC and no fake accuracy: its bars were drawn at height 0, as AUC 0."""
    from deepfake.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "figure_png", lambda fig: figures.append(fig) or b"")
    rows = [{"set": "test", "auc": 0.8, "real_accuracy": 0.0, "fake_accuracy": 0.75},
            {"set": "reals", "auc": None, "real_accuracy": 0.5, "fake_accuracy": None}]  # fmt: skip
    plots.generalisation_png(rows)
    [ax] = figures[0].axes
    drawn = [(round(bar.get_x() + bar.get_width() / 2, 2), bar.get_height()) for bar in ax.patches
             if np.isfinite(bar.get_height())]  # fmt: skip
    assert sorted(drawn) == [(-0.27, 0.8), (0.0, 0.0), (0.27, 0.75), (1.0, 0.5)]  # the real 0.0 keeps its bar
    said = sorted((round(text.get_position()[0], 2), text.get_text()) for text in ax.texts)
    assert said == [(0.73, "n/a"), (1.27, "n/a")]


@pytest.mark.parametrize("stored", [{"threshold": "abc"}, {"threshold": 1.5}, {"threshold": 0.5, "temperature": 0},
                                    {"threshold": 0.5, "temperature": "hot"}, {"threshold": True}])  # fmt: skip
def test_an_edited_operating_point_is_named_in_one_line(stored):
    """float("abc") of a hand-edited best.pth was a traceback in test, cam and predict."""
    from deepfake.errors import CheckpointError
    from deepfake.evaluation.decision import OperatingPoint

    with pytest.raises(CheckpointError, match=r"^x.pth holds a damaged operating point \(threshold "):
        OperatingPoint.of(stored, "x.pth")
    point = OperatingPoint.of({"threshold": 0.25, "temperature": 2, "threshold_policy": "eer"}, "x.pth")
    assert (point.threshold, point.temperature, point.policy) == (0.25, 2.0, "eer")
