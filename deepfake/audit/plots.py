"""The audit's pictures, as PNG bytes: feature distributions, spectra, duplicate pairs."""

from __future__ import annotations

import io
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from deepfake.audit.features import FEATURE_GROUPS
from deepfake.audit.spectra import ClassSpectrum
from deepfake.data.images import load_rgb
from deepfake.reports.html import figure_png

COLOURS = {"real": "#1f77b4", "fake": "#d62728"}


def feature_distributions(features: pd.DataFrame, target: np.ndarray) -> bytes | None:
    """One histogram per feature that varies, real and fake overlaid; None when none varies."""
    varying = [c for c in features.columns if features[c].nunique(dropna=True) > 1]
    if not varying:
        return None
    group_of = {column: group for group, columns in FEATURE_GROUPS.items() for column in columns}
    cols = 4
    rows = math.ceil(len(varying) / cols)
    # Constrained layout and one filled outline per class: many small axes draw several times faster.
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False, layout="constrained")
    for ax, column in zip(axes.flat, varying):
        values = features[column]
        edges = np.histogram_bin_edges(values.dropna(), bins=30)
        for label, name in ((0, "real"), (1, "fake")):
            own = values[target == label].dropna()
            if own.empty:
                continue
            counts, _ = np.histogram(own, bins=edges, density=True)
            ax.stairs(counts, edges, fill=True, alpha=0.5, color=COLOURS[name], label=name)
        ax.set_title(f"{column} ({group_of.get(column, '')})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(varying) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return figure_png(fig)


def radial_spectra(spectra: dict[str, ClassSpectrum], size: int) -> bytes:
    """Durall et al.'s 1-D view: mean power per frequency for both classes, and fake / real."""
    frequency = np.arange(size // 2 + 1) / size
    fig, (power_ax, ratio_ax) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=(2, 1),
                                             layout="constrained")  # fmt: skip
    for name, spectrum in spectra.items():
        power_ax.semilogy(frequency[1:], spectrum.radial_power[1:], color=COLOURS[name],
                          label=f"{name} ({spectrum.n_images} images)")  # fmt: skip
    power_ax.set_ylabel("mean power")
    power_ax.set_title("azimuthally averaged power spectrum (grey image)")
    power_ax.legend()
    ratio = spectra["fake"].radial_power[1:] / np.maximum(spectra["real"].radial_power[1:], 1e-12)
    ratio_ax.semilogy(frequency[1:], ratio, color="black")
    ratio_ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ratio_ax.set_ylabel("fake / real")
    ratio_ax.set_xlabel("frequency (cycles per pixel; 0.5 = Nyquist)")
    return figure_png(fig)


def residual_spectra(spectra: dict[str, ClassSpectrum], fake_only: list[dict], real_only: list[dict]) -> bytes:
    """Mean log-magnitude spectra of the high-pass residual per class and their difference; the
    peaks found in one class only are circled (fake: red, real: blue), with their mirror images."""
    real, fake = spectra["real"].residual_log_magnitude, spectra["fake"].residual_log_magnitude
    size = real.shape[0]
    extent = (-0.5, (size - 1) / size - 0.5, (size - 1) / size - 0.5, -0.5)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    low, high = np.percentile(np.concatenate([real.ravel(), fake.ravel()]), [1, 99.9])
    for ax, (name, values) in zip(axes[:2], (("real", real), ("fake", fake))):
        shown = ax.imshow(values, cmap="magma", vmin=low, vmax=high, extent=extent)
        ax.set_title(f"{name}: mean log |FFT| of residual")
    fig.colorbar(shown, ax=axes[:2], shrink=0.8)
    difference = fake - real
    bound = max(np.abs(difference).max(), 1e-6)
    shown = axes[2].imshow(difference, cmap="RdBu_r", vmin=-bound, vmax=bound, extent=extent)
    axes[2].set_title("fake - real")
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set_xlabel("horizontal frequency (cycles/px)")
        for peaks, colour in ((fake_only, COLOURS["fake"]), (real_only, COLOURS["real"])):
            for peak in peaks:
                for sign in (1, -1):
                    ax.add_patch(plt.Circle((sign * peak["fx"], sign * peak["fy"]), 2.5 / size, fill=False,
                                            color=colour, lw=1.0))  # fmt: skip
    axes[0].set_ylabel("vertical frequency (cycles/px)")
    return figure_png(fig)


def pair_thumbnail(path_a: str, path_b: str, height: int = 96) -> bytes:
    """The two images of a duplicate pair side by side, each scaled to ``height`` pixels."""
    thumbs = []
    for path in (path_a, path_b):
        image, _ = load_rgb(path, fallback_size=height)
        thumbs.append(ImageOps.contain(image, (height * 2, height)))
    canvas = Image.new("RGB", (sum(t.width for t in thumbs) + 6, height), "white")
    canvas.paste(thumbs[0], (0, 0))
    canvas.paste(thumbs[1], (thumbs[0].width + 6, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
