"""audit.html: one self-contained page with every check's verdict, tables and pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepfake.audit import plots
from deepfake.audit.spectra import ClassSpectrum, describe_frequency
from deepfake.audit.verdict import Verdict
from deepfake.reports import html

_VERDICT_CLASS = {"pass": "pass", "info": "meta", "warn": "warn", "fail": "fail"}
_LISTED_ROWS = 50

VERDICT_GUIDE = (
    "pass: nothing found. info: something a detector will learn that is worth knowing (class-specific "
    "spectral peaks are what artefact detectors use; resizing or re-encoding may erase them). warn: look "
    "before you train. fail: the dataset can be beaten without looking at faces, or its test split "
    "repeats its training images; with audit.strict=true a failing check stops training."
)


def _verdict(verdict: Verdict) -> str:
    return html.paragraph(f"{verdict.level.upper()}: {verdict.message}", _VERDICT_CLASS[verdict.level])


def _summary(report: dict) -> str:
    rows = [(check, report[check]["verdict"].level.upper(), report[check]["verdict"].message)
            for check in ("basics", "leakage", "shortcuts", "spectra")]  # fmt: skip
    seconds = report["seconds"]
    timing = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    return html.section(
        "Verdicts", html.table(["check", "verdict", "why"], rows), html.paragraph(VERDICT_GUIDE),
        html.paragraph(f"wall time: {timing}", "meta"),
    )  # fmt: skip


def _basics(basics: dict) -> str:
    counts = html.table(["split", "images", "real", "fake", "fake share"],
                        [(c["split"], c["images"], c["real"], c["fake"], c["fake_share"]) for c in basics["counts"]],
                        fmt=lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))  # fmt: skip

    def top(rows: list[dict]) -> str:
        return html.table(["split", "class", "distinct", "most common (count)"],
                          [(r["split"], r["class"], r["distinct"],
                            ", ".join(f"{k} ({v})" for k, v in r["top"].items())) for r in rows])  # fmt: skip

    parts = [_verdict(basics["verdict"]), counts, html.paragraph("Image sizes (width x height):"),
             top(basics["sizes"]), html.paragraph("Image modes:"), top(basics["modes"])]  # fmt: skip
    if basics["damaged"]:
        parts += [html.paragraph(f"Damaged files ({len(basics['damaged'])}; the loader serves them black):"),
                  html.table(["split", "CSV line", "path", "reason"],
                             [tuple(d.values()) for d in basics["damaged"][:_LISTED_ROWS]])]  # fmt: skip
    if basics["repeated_rows"]:
        parts += [html.paragraph(f"Repeated CSV rows ({len(basics['repeated_rows'])}; each weighs double):"),
                  html.table(["split", "CSV line", "path", "repeats line"],
                             [tuple(r.values()) for r in basics["repeated_rows"][:_LISTED_ROWS]])]  # fmt: skip
    return html.section("Basics", *parts)


def _leakage(leakage: dict, listed: int) -> str:
    counts = html.table(
        ["earlier split", "later split", "exact duplicates", "near duplicates", "share of later split"],
        [(c["earlier"], c["later"], c["exact"], c["near"], f"{c['share_of_later']:.2%}") for c in leakage["counts"]],
    )  # fmt: skip
    parts = [_verdict(leakage["verdict"]), counts,
             html.paragraph(f"Near duplicates: 64-bit pHash within {leakage['near_duplicate_distance']} bits "
                            "(audit.near_duplicate_distance), 16x16 grey thumbnails correlated at "
                            f"{leakage['near_duplicate_min_correlation']} or more "
                            "(audit.near_duplicate_min_correlation).")]  # fmt: skip
    pairs = leakage["pairs"]
    for pair in pairs[:listed]:
        caption = (f"{pair['b_split']} line {pair['b_row']} ({pair['b_path']}) = {pair['a_split']} line "
                   f"{pair['a_row']} ({pair['a_path']}): {pair['kind']}, {pair['distance']} bits, "
                   f"correlation {pair['correlation']:.3f}, {pair['partners']} partner(s)")  # fmt: skip
        parts.append(html.image(plots.pair_thumbnail(pair["b_path"], pair["a_path"]), caption))
    if len(pairs) > listed:
        parts.append(html.paragraph(f"... and {len(pairs) - listed} more pairs in audit.json (audit.listed_pairs)."))
    clean = leakage.get("clean_csvs")
    if clean:
        parts.append(html.table(["split", "clean CSV", "rows", "dropped"],
                                [(s, c["path"], c["rows"], c["dropped"]) for s, c in clean.items()]))  # fmt: skip
        parts.append(html.paragraph(f"Train on them with {leakage['clean_overrides']}"))
    elif pairs:
        parts.append(html.paragraph("audit.write_clean_csvs=true writes the CSVs without the leaked rows."))
    return html.section("Leakage across splits", *parts)


def _shortcuts(shortcuts: dict, features: pd.DataFrame, target: np.ndarray) -> str:
    rows = [(group, r["auc"], r["verdict"].upper()) for group, r in shortcuts["groups"].items()]
    parts = [
        _verdict(shortcuts["verdict"]),
        html.paragraph(f"A boosted-tree model fitted on {shortcuts['n_train']} training images' face-free "
                       f"features, scored on {shortcuts['n_test']} other images, held out from the fit (AUC 0.5 = "
                       "chance)."),
        html.table(["features", "test AUC", "verdict"], rows, fmt=lambda v: f"{v:.3f}"),
    ]  # fmt: skip
    distributions = plots.feature_distributions(features, target)
    if distributions is not None:
        parts.append(html.image(distributions, "per-class distribution of each feature that varies (all splits)"))
    return html.section("Shortcut baseline", *parts)


def _spectra(spectra_report: dict, spectra: dict[str, ClassSpectrum]) -> str:
    parts = [_verdict(spectra_report["verdict"])]
    if "peaks" not in spectra_report:
        return html.section("Spectra", *parts)
    size = spectra_report["size"]
    counts = ", ".join(f"{n} {name}" for name, n in spectra_report["images"].items())
    parts += [
        html.paragraph(f"Central {size}x{size} crops of {counts} images (audit.spectrum_samples per class)."),
        html.image(plots.radial_spectra(spectra, size), "azimuthally averaged power spectrum per class"),
        html.image(plots.residual_spectra(spectra, spectra_report["fake_only"], spectra_report["real_only"]),
                   "mean log-magnitude spectrum of the high-pass residual; circles: peaks of one class only"),
    ]  # fmt: skip
    rows = [(name, describe_frequency(p["fy"], p["fx"]), p["prominence_db"])
            for name in ("fake", "real") for p in spectra_report[f"{name}_only"][:20]]  # fmt: skip
    if rows:
        parts.append(html.table(["only in", "frequency (cycles/px)", "prominence (dB)"], rows,
                                fmt=lambda v: f"{v:.1f}"))  # fmt: skip
    return html.section("Spectra", *parts)


def write_html_report(
    path: Path, report: dict, images: pd.DataFrame, features: pd.DataFrame, spectra: dict, listed_pairs: int
) -> Path:
    target = images["target"].to_numpy()
    splits = ", ".join(f"{name}: {csv}" for name, csv in report["splits"].items())
    page = html.document(
        f"Dataset audit: {report['title']}",
        f"overall: {report['verdict'].upper()} — {splits}",
        _summary(report),
        _basics(report["basics"]),
        _leakage(report["leakage"], listed_pairs),
        _shortcuts(report["shortcuts"], features, target),
        _spectra(report["spectra"], spectra),
    )
    return html.write_document(path, page)
