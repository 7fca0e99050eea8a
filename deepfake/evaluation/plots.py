"""The evaluation's pictures as PNG bytes: ROC, PR, score histograms, reliability, confusion matrix,
robustness, generalisation and training curves.

Figures are built with matplotlib's object API (no pyplot state, no GUI backend), so they can be
drawn from any thread or process; ``deepfake.reports.html.figure_png`` turns each into PNG bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

from deepfake.evaluation.calibration import reliability_bins
from deepfake.reports.html import figure_png

REAL_COLOUR, FAKE_COLOUR, POINT_COLOUR = "#1f77b4", "#d62728", "#2ca02c"


def _figure(width: float = 5.0, height: float = 4.0, columns: int = 1):
    fig = Figure(figsize=(width * columns, height), layout="constrained")
    axes = fig.subplots(1, columns, squeeze=False)[0]
    return fig, axes


# The curves rank images by their logits, as metrics_test.json does: p(fake) saturates at 1.0 past a
# scaled logit of ~37 (a calibration's small temperature makes that common), and its ties changed the
# curve and its AUC or AP beside the figures quoted next to it.


def roc_png(targets, logits, probs, threshold: float, tpr_at_fpr: Sequence[dict]) -> bytes:
    """ROC on a log FPR axis (low false-alarm rates are where detectors are used), operating point marked."""
    fpr, tpr, _ = skm.roc_curve(targets, logits)
    fig, (ax,) = _figure()
    floor = 0.5 / max(1, int((np.asarray(targets) == 0).sum()))  # below one real image: shown at the axis floor
    ax.plot(np.maximum(fpr, floor), tpr, color=FAKE_COLOUR, label=f"AUC {skm.roc_auc_score(targets, logits):.4f}")
    called = np.asarray(probs) >= threshold
    real, fake = np.asarray(targets) == 0, np.asarray(targets) == 1
    ax.plot(
        max(called[real].mean(), floor),
        called[fake].mean(),
        "o",
        color=POINT_COLOUR,
        label=f"threshold {threshold:.4g}",
    )
    for point in tpr_at_fpr:
        ax.axvline(point["max_fpr"], color="#999", lw=0.8, ls=":")
    ax.set(xscale="log", xlim=(floor, 1), ylim=(0, 1.01), xlabel="false-positive rate (reals called fake)",
           ylabel="true-positive rate (fakes caught)", title="ROC")  # fmt: skip
    ax.legend(loc="lower right")
    return figure_png(fig)


def pr_png(targets, logits) -> bytes:
    precision, recall, _ = skm.precision_recall_curve(targets, logits)
    fig, (ax,) = _figure()
    ax.step(recall, precision, where="post", color=FAKE_COLOUR,
            label=f"AP {skm.average_precision_score(targets, logits):.4f}")  # fmt: skip
    ax.axhline(np.mean(targets), color="#999", lw=0.8, ls=":", label="share of fakes")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (fakes caught)", ylabel="precision", title="Precision-recall")
    ax.legend(loc="lower left")
    return figure_png(fig)


def histogram_png(targets, probs, threshold: float) -> bytes:
    targets, probs = np.asarray(targets), np.asarray(probs)
    fig, (ax,) = _figure()
    bins = np.linspace(0, 1, 41)
    ax.hist(probs[targets == 0], bins=bins, alpha=0.6, color=REAL_COLOUR, label=f"real ({(targets == 0).sum()})")
    ax.hist(probs[targets == 1], bins=bins, alpha=0.6, color=FAKE_COLOUR, label=f"fake ({(targets == 1).sum()})")
    ax.axvline(threshold, color=POINT_COLOUR, lw=1.5, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="p(fake)", ylabel="images", title="Scores per class", yscale="log")
    ax.legend()
    return figure_png(fig)


def reliability_png(targets, probs_by_name: dict[str, np.ndarray], n_bins: int) -> bytes:
    """One panel per set of probabilities (before / after temperature scaling): share of fakes per bin."""
    fig, axes = _figure(4.2, 4.2, len(probs_by_name))
    for ax, (name, probs) in zip(axes, probs_by_name.items()):
        bins = reliability_bins(targets, probs, n_bins)
        centres = (bins["edges"][:-1] + bins["edges"][1:]) / 2
        filled = bins["counts"] > 0
        ax.bar(centres[filled], bins["fraction_fake"][filled], width=1 / n_bins, color=FAKE_COLOUR, alpha=0.7,
               edgecolor="white", label="share of fakes")  # fmt: skip
        ax.plot(bins["mean_p_fake"][filled], bins["fraction_fake"][filled], "o", color="black", ms=3,
                label="at mean p(fake)")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=0.8, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="p(fake)", ylabel="share of fakes", title=name)
        ax.legend(loc="upper left", fontsize="small")
    return figure_png(fig)


def confusion_png(matrix: Sequence[Sequence[int]], threshold: float) -> bytes:
    matrix = np.asarray(matrix)
    fig, (ax,) = _figure(4.0, 3.6)
    ax.imshow(matrix, cmap="Blues")
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    colours = cell_text_colours(matrix)
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, f"{count}\n{shares[row, col]:.1%}", ha="center", va="center", color=colours[row, col])
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
           xlabel="called", ylabel="true", title=f"At threshold {threshold:.4g}")  # fmt: skip
    return figure_png(fig)


def cell_text_colours(matrix: np.ndarray) -> np.ndarray:
    """White on the dark half of imshow's scale, which spans the smallest count to the largest (half
    the largest count put white text on the white cell of a matrix whose counts are all close)."""
    middle = (matrix.min() + matrix.max()) / 2
    return np.where(matrix > middle, "white", "black")


def auc_limits(values: Sequence[float | None]) -> tuple[float, float]:
    """The AUC axis: from 0.4 (chance and a little under), lower when a point lies below it."""
    lowest = min((v for v in values if v is not None), default=0.4)
    return min(0.4, lowest - 0.05), 1.01


def robustness_png(rows: Sequence[dict], descriptions: dict[str, str]) -> bytes:
    """AUC against severity, one panel per kind of perturbation, the clean AUC at the left of each."""
    clean = next(row for row in rows if row["perturbation"] == "none")
    kinds = list(dict.fromkeys(row["perturbation"] for row in rows if row["perturbation"] != "none"))
    fig, axes = _figure(3.2, 3.2, max(1, len(kinds)))
    for ax, kind in zip(axes, kinds):
        own = [row for row in rows if row["perturbation"] == kind]
        labels = ["none"] + [f"{row['severity']:g}" for row in own]
        values = [clean["auc"]] + [row["auc"] for row in own]
        ax.plot(range(len(values)), [np.nan if v is None else v for v in values], "o-", color=FAKE_COLOUR)
        ax.set(xticks=range(len(values)), xticklabels=labels, ylim=auc_limits(values), title=kind,
               xlabel=descriptions.get(kind, kind), ylabel="AUC")  # fmt: skip
        ax.axhline(0.5, color="#999", lw=0.8, ls=":")
    return figure_png(fig)


def generalisation_png(rows: Sequence[dict]) -> bytes:
    """Per test set: AUC, and accuracy on reals and on fakes (an unseen generator's fakes called real shows here)."""
    names = [row["set"] for row in rows]
    fig, (ax,) = _figure(max(5.0, 1.3 * len(names)), 3.8)
    x = np.arange(len(names))
    for offset, (key, colour) in zip((-0.27, 0, 0.27), (("auc", "#555"), ("real_accuracy", REAL_COLOUR),
                                                       ("fake_accuracy", FAKE_COLOUR))):  # fmt: skip
        values = [row[key] for row in rows]
        # An undefined figure (one class: no AUC) is no bar and says n/a: a zero-height bar read as AUC 0.
        heights = [np.nan if value is None else value for value in values]
        ax.bar(x + offset, heights, width=0.26, color=colour, label=key.replace("_", " "))
        for position, value in zip(x + offset, values):
            if value is None:
                ax.text(position, 0.01, "n/a", ha="center", va="bottom", rotation=90, fontsize="small", color=colour)
    ax.set(xticks=x, xticklabels=names, ylim=(0, 1.05), title="Across test sets")
    ax.legend(loc="lower left", fontsize="small")
    return figure_png(fig)


def training_curves_png(rows: Sequence[dict]) -> bytes:
    """Loss, validation AUC and learning rates per epoch from metrics_log.csv; the phase boundary dashed."""
    epochs = [int(row["epoch"]) for row in rows]

    def column(name: str) -> list[float]:
        return [float(row[name]) if row.get(name) not in (None, "") else np.nan for row in rows]

    fig, axes = _figure(4.0, 3.4, 3)
    axes[0].plot(epochs, column("train_loss"), "o-", label="train")
    axes[0].plot(epochs, column("val_loss"), "o-", label="validation")
    axes[0].set(title="Loss", xlabel="epoch")
    axes[1].plot(epochs, column("val_auc"), "o-", color=FAKE_COLOUR)
    axes[1].set(title="Validation AUC", xlabel="epoch")
    for name in ("lr_head", "lr_backbone"):
        values = np.asarray(column(name))
        axes[2].plot(epochs, np.where(values > 0, values, np.nan), "o-", label=name.removeprefix("lr_"))
    axes[2].set(title="Learning rate (epoch start)", xlabel="epoch", yscale="log")
    phases = [row["phase"] for row in rows]
    starts = [i for i in range(len(rows)) if i == 0 or phases[i] != phases[i - 1]]
    for i in starts:
        if i > 0:
            for ax in axes:
                ax.axvline((epochs[i] + epochs[i - 1]) / 2, color="#999", ls="--", lw=1)
        axes[1].annotate(phases[i], (epochs[i], 1), xycoords=("data", "axes fraction"), xytext=(2, -12),
                         textcoords="offset points", fontsize="small", color="#555")  # fmt: skip
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (axes[0], axes[2]):
        ax.legend(fontsize="small")
    return figure_png(fig)
