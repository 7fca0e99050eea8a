"""How the tasks show numbers to people (tables, log lines); files keep full precision."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from deepfake.data.scan import list_for_message
from deepfake.tracking.console import summary_console
from deepfake.tracking.promotion import describe, promotion_key, score_on


def fmt_metric(value) -> str:
    """4 decimals for floats, ``n/a`` for a missing figure, anything else as it is."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_run_summary(entry: dict, seconds: float, *, registry_path: str, promoted_to: str | None) -> None:
    """The table that ends a training run: its figures and where every output went."""
    out = Path(entry["run_dir"])
    table = Table(title=f"run {entry['run_name']}", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    test = entry["test_metrics"] or {}
    rows = [
        ("best val AUC", f"{fmt_metric(entry['best_val_auc'])} (epoch {entry['best_epoch']} of {entry['epochs']})"),
        (
            "test AUC / accuracy",
            f"{fmt_metric(test['auc'])} / {fmt_metric(test['accuracy'])}" if test else "not run (train.do_test=false)",
        ),
        ("damaged images", ", ".join(f"{k} {v}" for k, v in entry["damaged_images"].items()) or "none"),
        ("wall time", f"{seconds:.1f} s"),
        ("run dir", str(out)),
        ("checkpoints", "best.pth, last.pth"),
        ("metrics", "metrics_log.csv" + (", metrics_test.json" if test else "")),
        # What the run wrote beside them, as found on disk (train.do_test, eval.report, train.do_cam decide).
        (
            "reports",
            ", ".join(
                name
                for name in ("report.html", "predictions.csv", "eval/", "training_curves.png", "model_card.md", "cam/")
                if (out / name.rstrip("/")).exists()
            )
            or "none",
        ),  # fmt: skip
        ("logs", "run.log" + (f", tb/ (tensorboard --logdir {out / 'tb'})" if (out / "tb").exists() else "")),
        ("registry", f"{registry_path}" + (f" — promoted to {promoted_to}" if promoted_to else "")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    summary_console().print(table)


def _registry_row(entry: dict, best: dict | None, key: str | None, tagged: bool, *, missing_dir: bool) -> list:
    """One entry's cells, in print_registry's column order."""
    test = entry.get("test_metrics") or {}
    mark = "★" if best and entry["run_name"] == best["run_name"] else ("≠" if _unscored(entry, key) else "")
    return [
        mark,
        entry["run_name"],
        *((Text(", ".join(entry.get("tags") or [])),) if tagged else ()),  # Text: a tag is never markup
        str(entry.get("backbone")),
        str(entry.get("dataset")),
        fmt_metric(entry.get("best_val_auc")),
        fmt_metric(entry.get("best_epoch")),
        fmt_metric(score_on(entry, key)),
        describe((entry.get("promotion") or {}).get("set")),
        fmt_metric(test.get("auc")),
        fmt_metric(test.get("accuracy")),
        str(entry.get("status")) + (" (run dir missing)" if missing_dir else ""),
        str(entry.get("ended_at")),
    ]


def print_registry(
    runs: list[dict],
    best: dict | None,
    *,
    registry_path: str,
    best_model_path: str,
    limit: int,
    title: str | None = None,
    set_key: str | None = None,
) -> None:
    """The registry as a table ranked on one promotion set (``set_key``: the one the global best won
    on, Registry.ranking_set; without it, the best's own): the best is starred, finished runs with no
    score on that set (validated on other images, never re-scored) are marked ≠ and listed after;
    failures are explained below the table (they are never scored, so no ≠ for them)."""
    console = summary_console()
    if not runs:
        which = f" ({title})" if title else ""
        console.print(f"no runs{which} registered in {registry_path}; train one with `python scripts/main.py`")
        return
    key = set_key or promotion_key(best)
    runs = sorted(runs, key=lambda entry: _comparable_rank(entry, key))
    heading = f"{len(runs)} run(s) in {registry_path}" + (f" — {title}" if title else "")
    table = Table(title=heading, title_justify="left")
    tagged = any(entry.get("tags") for entry in runs[:limit])
    columns = ("", "run", *(("tags",) if tagged else ()), "backbone", "dataset", "val AUC", "epoch", "promotion AUC",
               "own set", "test AUC", "test acc", "status", "ended")  # fmt: skip
    for column in columns:
        table.add_column(column)
    gone = [entry for entry in runs if entry.get("run_dir") and not Path(entry["run_dir"]).is_dir()]
    for entry in runs[:limit]:
        table.add_row(*_registry_row(entry, best, key, tagged, missing_dir=entry in gone))
    console.print(table)
    if gone:
        # The registry stays the record of every run: a run dir moved, archived or deleted is shown, not an error.
        console.print(f"{len(gone)} run dir(s) no longer on disk (moved or deleted; their entries and figures stay): "
                      + list_for_message([entry["run_name"] for entry in gone]))  # fmt: skip
    for entry in runs[:limit]:
        if entry.get("error"):
            when = " failed after it finished" if entry.get("status") == "finished" else " failed"
            console.print(Text.assemble((entry["run_name"], "red"), f"{when}: {entry['error']}"))
    if best:
        where = _set_named(key, [best, *runs]) if key else "validation AUC"
        console.print(f"global best: {best['run_name']} -> {best_model_path}; promotion AUC is on {where}")
        if any(_unscored(entry, key) for entry in runs[:limit]):
            console.print("≠: no score on that set yet; task=registry registry.rescore=true scores them there")


def _unscored(entry: dict, key: str | None) -> bool:
    """A finished run with no score on set ``key``: one registry.rescore=true would score."""
    return entry.get("status", "finished") == "finished" and score_on(entry, key) is None


def _set_named(key: str, entries: list[dict]) -> str:
    """The description of set ``key`` from any entry that holds a score on it."""
    for entry in entries:
        if promotion_key(entry) == key:
            return describe(entry["promotion"]["set"])
        if key in (entry.get("rescored") or {}):
            return describe(entry["rescored"][key].get("set"))
    return key


def _comparable_rank(entry: dict, key: str | None) -> tuple:
    score = score_on(entry, key)
    return (score is None, -(score or 0.0), -(entry.get("best_val_auc") or 0.0))


def _three(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _with_interval(row: dict, key: str) -> str:
    """``0.992`` over ``[0.981, 0.998]``: the figure and its interval, 3 decimals to keep columns narrow."""
    value, low, high = row.get(f"test_{key}"), row.get(f"test_{key}_low"), row.get(f"test_{key}_high")
    return _three(value) + (f"\n[{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def print_comparison(rows: list[dict], *, registry_path: str, csv_path: str) -> None:
    """task=compare: one line per run, test figures with their intervals."""
    console = summary_console()
    if not rows:
        console.print(f"no registered run matches in {registry_path}; task=registry lists them")
        return
    table = Table(title=f"{len(rows)} run(s) from {registry_path}", title_justify="left")
    columns = ("run", "backbone", "dataset", "val AUC", "threshold (policy)", "test AUC", "test AP", "test EER",
               "test acc", "acc at 0.5", "real / fake acc")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for row in rows:
        threshold = "n/a" if row["threshold"] is None else f"{row['threshold']:.4g} ({row['threshold_policy']})"
        table.add_row(
            row["run_name"], str(row["backbone"]), str(row["dataset"]), _three(row["best_val_auc"]), threshold,
            _with_interval(row, "auc"), _with_interval(row, "ap"), _with_interval(row, "eer"),
            _with_interval(row, "accuracy"), _three(row["test_accuracy_at_0.5"]),
            f"{_three(row['test_real_accuracy'])} / {_three(row['test_fake_accuracy'])}",
        )  # fmt: skip
    console.print(table)
    console.print(f"written to {csv_path}")


def print_predict_summary(
    frame: pd.DataFrame,
    inputs,
    out: Path,
    *,
    threshold: float,
    top_k: int,
    images_per_second: float | None,
    metrics: dict | None,
    overlays: Path | None,
) -> None:
    """What task=predict found: verdicts counted, the most fake-looking images, the damaged files."""
    console = summary_console()
    scored = frame[frame["p_fake"].notna()]
    counts = scored["label"].value_counts()
    table = Table(title=f"predictions: {out}", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("called fake", f"{counts.get('fake', 0)} (p_fake >= {threshold:.4g})"),
        ("called real", str(counts.get("real", 0))),
        ("damaged, not scored", str(int(frame["damaged"].notna().sum()))),
    ]
    if "face" in frame.columns:
        no_face = frame["face"].isna() & frame["damaged"].isna()
        rows.append(("images without a face", str(int(no_face.sum()))))
    if inputs.skipped:
        rows.append(
            (
                "skipped (not images)",
                f"{len(inputs.skipped)}: {list_for_message([Path(p).name for p in inputs.skipped], 5)}",
            )
        )
    if metrics:
        rows.append(("labelled: AUC / accuracy", f"{fmt_metric(metrics['auc'])} / {fmt_metric(metrics['accuracy'])}"))
    if images_per_second:
        rows.append(("throughput", f"{images_per_second:.1f} images/s"))
    if overlays:
        rows.append(("CAM overlays", str(overlays)))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    _print_paths(console, f"top {top_k} most fake-looking", scored.nlargest(top_k, "p_fake"), "p_fake")
    damaged = frame[frame["damaged"].notna()]
    more = f" (the first {top_k} of {len(damaged)})" if len(damaged) > top_k else ""
    _print_paths(console, f"damaged files{more}", damaged.head(top_k), "damaged")


def _print_paths(console: Console, title: str, rows: pd.DataFrame, column: str) -> None:
    if rows.empty:
        return
    table = Table(title=title, title_justify="left")
    if column == "p_fake":
        table.add_column(column, no_wrap=True)
    else:  # a reason can be long (a decompression bomb's is a sentence): it wraps, the path keeps its room
        table.add_column(column, max_width=max(16, console.width // 3))
    if "face" in rows.columns:
        table.add_column("face")
    table.add_column("path", overflow="fold", min_width=min(40, console.width // 2))
    for _, row in rows.iterrows():
        value = f"{row[column]:.4f}" if column == "p_fake" else str(row[column])
        face = [] if "face" not in rows.columns else ["" if pd.isna(row["face"]) else str(row["face"])]
        table.add_row(value, *face, str(row["path"]))
    console.print(table)
