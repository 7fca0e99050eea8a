"""report.html: the whole evaluation in one self-contained page (metrics with intervals, the
operating point and where it came from, every plot), from metrics_test.json's content and the PNGs."""

from __future__ import annotations

from deepfake.reports import html

# Plot file stem -> caption, in the order the report shows them.
CAPTIONS = {
    "roc": "ROC (log false-positive axis), the operating point marked",
    "pr": "Precision-recall",
    "histogram": "p(fake) per class, the threshold marked",
    "confusion": "Confusion matrix at the threshold",
    "reliability": "Reliability diagram",
    "robustness": "AUC against perturbation severity",
    "generalisation": "AUC and per-class accuracy per test set",
    "training_curves": "Training curves (metrics_log.csv); dashed: phase boundary",
}
# Display width of the four curve plots, so two sit side by side on a laptop screen.
FIGURE_WIDTH = 480


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _interval(intervals: dict, key: str) -> str:
    low_high = (intervals or {}).get(key)
    return "" if not low_high else f"[{low_high[0]:.4f}, {low_high[1]:.4f}]"


def _operating_point(metrics: dict) -> str:
    used, stored = metrics["decision_rule"], metrics.get("validation_operating_point") or {}
    if used["source"] == "checkpoint":
        origin = f"stored in the checkpoint, chosen on validation by policy {used['policy'] or 'unrecorded'}"
    else:
        origin = f"{used['source']} override (the checkpoint stores {_num(used['stored_threshold'])}, policy {used['policy']})"
    rows = [("threshold (p(fake) at or above: fake)", _num(used["threshold"], 6)), ("where it came from", origin),
            ("temperature", _num(used["temperature"]))]  # fmt: skip
    parts = [html.table(["decision rule", ""], rows)]
    if stored:
        parts.append(html.paragraph(f"Validation figures at the stored threshold ({stored['n_real']} real, "
                                    f"{stored['n_fake']} fake images):"))  # fmt: skip
        keys = ("accuracy", "real_accuracy", "fake_accuracy", "tpr", "fpr", "auc", "ece", "brier")
        parts.append(html.table(keys, [[stored.get(k) for k in keys]], fmt=_num))
    return html.section("Operating point", *parts)


def _figures(metrics: dict) -> str:
    intervals = metrics.get("intervals") or {}
    calibration = metrics["calibration"]
    rows = [
        ("AUC", metrics["auc"], _interval(intervals, "auc")),
        ("AP", metrics["ap"], _interval(intervals, "ap")),
        ("EER", metrics["eer"], _interval(intervals, "eer")),
        (
            f"accuracy at the threshold ({metrics['threshold']:.4g})",
            metrics["accuracy"],
            _interval(intervals, "accuracy"),
        ),
        ("accuracy at 0.5", metrics["accuracy_at_0.5"], ""),
        ("real accuracy (reals called real)", metrics["real_accuracy"], ""),
        ("fake accuracy (fakes caught)", metrics["fake_accuracy"], ""),
        (
            "precision / recall / F1",
            f"{_num(metrics['precision'])} / {_num(metrics['recall'])} / {_num(metrics['f1'])}",
            "",
        ),
        ("log loss", metrics["log_loss"], ""),
        (f"ECE ({calibration['ece_bins']} bins), uncalibrated", calibration["ece_uncalibrated"], ""),
        (f"ECE at temperature {calibration['temperature']:.3g}", calibration["ece"], ""),
        (
            "Brier, uncalibrated / calibrated",
            f"{_num(calibration['brier_uncalibrated'])} / {_num(calibration['brier'])}",
            "",
        ),
        ("images (real / fake)", f"{metrics['n_samples']} ({metrics['n_real']} / {metrics['n_fake']})", ""),
    ]
    boot = metrics.get("bootstrap") or {}
    note = (f"Intervals: {boot.get('confidence', 0) * 100:g}% percentile bootstrap, {boot.get('resamples')} resamples "
            f"stratified by class, seed {boot.get('seed')}." if boot.get("resamples") else "No intervals (eval.bootstrap=0).")  # fmt: skip
    operating = [
        (f"{p['max_fpr'] * 100:g}%", p["tpr"], p["fpr"], p["threshold"]) for p in metrics.get("tpr_at_fpr", [])
    ]
    level = f"{boot['confidence'] * 100:g}% interval" if boot.get("resamples") else "interval"  # 97.5, not 98
    return html.section(
        "Test figures",
        html.table(["metric", "value", level], rows, fmt=_num),
        html.paragraph(note, "meta"),
        html.paragraph(
            "TPR at fixed false-positive rates (read off the test ROC: a description, not an operating point):"
        ),
        html.table(["FPR at most", "TPR", "FPR", "threshold"], operating, fmt=_num),
    )


def _table_section(title: str, columns: list[str], rows: list[dict], keys: list[str], plot: str, plots: dict) -> str:
    parts = [html.table(columns, [[row.get(k) for k in keys] for row in rows], fmt=_num)]
    if plot in plots:
        parts.append(html.image(plots[plot], CAPTIONS[plot]))
    return html.section(title, *parts)


def render(metrics: dict, plots: dict[str, bytes]) -> str:
    """The page; ``plots`` maps a CAPTIONS key to PNG bytes (missing ones are left out)."""
    curves = [html.image(plots[name], CAPTIONS[name], width=FIGURE_WIDTH)
              for name in ("roc", "pr", "histogram", "confusion") if name in plots]  # fmt: skip
    sections = [_operating_point(metrics), _figures(metrics), html.section("Curves", *curves)]
    if "reliability" in plots:
        sections.append(html.section("Calibration", html.image(plots["reliability"], CAPTIONS["reliability"])))
    metric_columns = ["AUC", "AP", "accuracy", "real accuracy", "fake accuracy"]
    metric_keys = ["auc", "ap", "accuracy", "real_accuracy", "fake_accuracy"]
    if metrics.get("robustness"):
        rows = [
            {**row, "severity": "" if row["severity"] is None else f"{row['severity']:g}"}
            for row in metrics["robustness"]
        ]
        sections.append(_table_section("Robustness (test set, each perturbation before preprocessing)",
                                       ["perturbation", "severity", *metric_columns], rows,
                                       ["perturbation", "severity", *metric_keys], "robustness", plots))  # fmt: skip
    if len(metrics.get("sets") or []) > 1:
        rows = [{**row, "auc_interval": _interval(row.get("intervals"), "auc")} for row in metrics["sets"]]
        sections.append(_table_section("Generalisation across test sets", ["set", "images", "AUC", "AUC interval",
                                       *metric_columns[1:]], rows, ["set", "n_samples", "auc", "auc_interval",
                                       *metric_keys[1:]], "generalisation", plots))  # fmt: skip
    if "training_curves" in plots:
        sections.append(html.section("Training", html.image(plots["training_curves"], CAPTIONS["training_curves"])))
    title = f"Evaluation of {metrics.get('run_name') or metrics['checkpoint']}"
    subtitle = f"checkpoint {metrics['checkpoint']} · test set {metrics['test_csv']} · {metrics['evaluated_at']}"
    return html.document(title, subtitle, *sections)
