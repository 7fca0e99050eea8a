"""What a detector can see in the frequency domain, per class, on a sample of each.

Two views from the literature:
- the azimuthally averaged power spectrum of the grey image (Durall et al., CVPR 2020): upsampling
  generators get the high frequencies wrong, which shows as a gap between the classes' curves;
- the mean log-magnitude 2-D spectrum of the high-pass residual, the image minus its 3x3 median
  (in the spirit of Frank et al., ICML 2020): a periodic generator fingerprint or checkerboard is a
  grid of peaks there, which image content, different in every image, averages away.

Peaks are found as local maxima standing ``min_prominence_db`` above their neighbourhood's median;
those of one class only are what a detector can learn about that class.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from deepfake.audit.verdict import INFO, PASS, WARN, Verdict
from deepfake.data.images import load_rgb
from deepfake.data.scan import DEFAULT_SCAN_THREADS

_DB = 20.0 / np.log(10.0)  # natural-log magnitude -> decibels


@dataclass
class ClassSpectrum:
    n_images: int
    radial_power: np.ndarray  # mean power per integer radius 0..size//2 (frequency = radius / size)
    residual_log_magnitude: np.ndarray  # size x size, zero frequency at the centre


def crop_size(sizes_per_class: Sequence[Sequence[tuple[int, int]]], cap: int) -> int:
    """The side of the square the spectra are taken on: the typical shorter side of the class whose
    images are smallest, at most ``cap``.

    Cropping (never resizing) keeps a periodic pattern's frequency; an image smaller than this is
    skipped. A median over both classes pooled skipped every image of a class stored smaller than
    the other's (reals of 32 px beside fakes of 40 px), the very difference an audit looks for.
    """
    medians = [np.median([min(width, height) for width, height in sizes]) for sizes in sizes_per_class if len(sizes)]
    return int(min(cap, *medians)) if medians else 0


def grey_crop(path: str, size: int) -> Image.Image | None:
    """The central ``size`` x ``size`` square of the image in grey levels; None if smaller or damaged."""
    image, reason = load_rgb(path)
    if reason is not None or min(image.size) < size:
        return None
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.convert("L").crop((left, top, left + size, top + size))


@lru_cache(maxsize=8)
def _rings(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ring index (integer radius, -1 beyond size//2) of each bin of a centred spectrum, and ring sizes."""
    y, x = np.indices((size, size)) - size // 2
    radius = np.rint(np.hypot(y, x)).astype(int)
    radius[radius > size // 2] = -1
    return radius, np.bincount(radius[radius >= 0], minlength=size // 2 + 1)


def azimuthal_average(power: np.ndarray) -> np.ndarray:
    """Mean of a centred 2-D spectrum over rings of integer radius 0..size//2."""
    radius, counts = _rings(power.shape[0])
    inside = radius >= 0
    return np.bincount(radius[inside], weights=power[inside], minlength=len(counts)) / np.maximum(counts, 1)


def _image_spectra(grey: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(grey, np.float32) / 255.0
    power = np.abs(np.fft.fftshift(np.fft.fft2(pixels - pixels.mean()))) ** 2
    # The median of 8-bit grey levels is exact in 8 bits, and PIL's filter is several times faster.
    residual = pixels - np.asarray(grey.filter(ImageFilter.MedianFilter(3)), np.float32) / 255.0
    magnitude = np.abs(np.fft.fftshift(np.fft.fft2(residual)))
    return azimuthal_average(power), np.log(magnitude + 1e-6)


def class_spectrum(paths: Sequence[str], size: int, threads: int = DEFAULT_SCAN_THREADS) -> ClassSpectrum:
    """Both views averaged over the images of ``paths`` that are at least ``size`` on their shorter side."""

    def one(path: str):
        grey = grey_crop(path, size)
        return None if grey is None else _image_spectra(grey)

    radial, residual, count = np.zeros(size // 2 + 1), np.zeros((size, size)), 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for result in pool.map(one, paths):
            if result is not None:
                radial += result[0]
                residual += result[1]
                count += 1
    scale = 1.0 / max(count, 1)
    return ClassSpectrum(count, radial * scale, residual * scale)


def _canonical(fy: float, fx: float) -> tuple[float, float]:
    """One representative of a frequency and its mirror image (-fy, -fx); -1/2 is the same as 1/2."""
    if fy < 0 or (fy == 0 and fx < 0):
        fy, fx = -fy, -fx
    return (0.5 if fy == -0.5 else fy), (0.5 if fx == -0.5 else fx)


def periodic_peaks(log_magnitude: np.ndarray, min_prominence_db: float) -> list[dict]:
    """Local maxima at least ``min_prominence_db`` above the median of their 7x7 neighbourhood.

    One of each pair of mirror frequencies is kept (a real image's spectrum is symmetric); the lowest
    frequencies (within 2 bins of zero), where the median filter leaves no residual, are left out.
    Frequencies are in cycles per pixel, (vertical, horizontal), strongest first.
    """
    size = log_magnitude.shape[0]
    background = ndimage.median_filter(log_magnitude, size=7, mode="wrap")
    prominence = (log_magnitude - background) * _DB
    is_peak = (log_magnitude == ndimage.maximum_filter(log_magnitude, size=3, mode="wrap")) & (
        prominence >= min_prominence_db
    )
    peaks: dict[tuple[float, float], float] = {}
    for row, column in zip(*np.nonzero(is_peak)):
        fy, fx = _canonical((row - size // 2) / size, (column - size // 2) / size)
        if np.hypot(fy, fx) * size >= 2:
            peaks[fy, fx] = max(peaks.get((fy, fx), -np.inf), float(prominence[row, column]))
    found = [{"fy": fy, "fx": fx, "prominence_db": value} for (fy, fx), value in peaks.items()]
    return sorted(found, key=lambda peak: -peak["prominence_db"])


def prominence_at(log_magnitude: np.ndarray, fy: float, fx: float) -> float:
    """How far (dB) the spectrum at frequency (fy, fx) stands above its 7x7 neighbourhood's median."""
    size = log_magnitude.shape[0]
    row, column = int(round(fy * size)) + size // 2, int(round(fx * size)) + size // 2
    window = np.take(np.take(log_magnitude, range(row - 3, row + 4), axis=0, mode="wrap"),
                     range(column - 3, column + 4), axis=1, mode="wrap")  # fmt: skip
    return float((log_magnitude[row % size, column % size] - np.median(window)) * _DB)


def class_only_peaks(own: np.ndarray, other: np.ndarray, min_prominence_db: float) -> list[dict]:
    """Peaks of ``own`` that ``other`` lacks at the same frequency (below the prominence threshold)."""
    return [peak for peak in periodic_peaks(own, min_prominence_db)
            if prominence_at(other, peak["fy"], peak["fx"]) < min_prominence_db]  # fmt: skip


def describe_frequency(fy: float, fx: float) -> str:
    """``(1/8, -1/4)`` cycles per pixel: periodic traces sit at simple fractions."""
    return "(" + ", ".join(str(Fraction(f).limit_denominator(64)) for f in (fy, fx)) + ")"


def spectra_check(
    paths_by_class: dict[str, Sequence[str]], size: int, min_prominence_db: float, threads: int = DEFAULT_SCAN_THREADS,
    split: str = "spectrum",
) -> tuple[dict, dict[str, ClassSpectrum]]:  # fmt: skip
    """Both views per class (``real``, ``fake``), the peaks of each, and those only one class has;
    ``paths_by_class``: readable images of ``split`` (audit.spectrum_split)."""
    spectra = {name: class_spectrum(paths, size, threads) for name, paths in paths_by_class.items()}
    report = {
        "size": size,
        "images": {name: spectrum.n_images for name, spectrum in spectra.items()},
        "frequency": (np.arange(size // 2 + 1) / max(size, 1)).tolist(),
        "radial_power": {name: spectrum.radial_power.tolist() for name, spectrum in spectra.items()},
        "min_prominence_db": min_prominence_db,
    }
    cause = _unmeasured(paths_by_class, spectra, size, split)
    if cause:
        report["verdict"] = Verdict(WARN, f"not measured: {cause}")
        return report, spectra
    real, fake = spectra["real"].residual_log_magnitude, spectra["fake"].residual_log_magnitude
    report["peaks"] = {"real": periodic_peaks(real, min_prominence_db), "fake": periodic_peaks(fake, min_prominence_db)}
    report["fake_only"] = class_only_peaks(fake, real, min_prominence_db)
    report["real_only"] = class_only_peaks(real, fake, min_prominence_db)
    report["verdict"] = _judge(report)
    return report, spectra


def _unmeasured(paths_by_class: dict[str, Sequence[str]], spectra: dict[str, ClassSpectrum], size: int,
                split: str) -> str | None:  # fmt: skip
    """Why a class has no spectrum: no image of it in the split at all, or none as large as the crop."""
    missing = [name for name, paths in paths_by_class.items() if not len(paths)]
    if missing:
        return f"the {split} split has no readable {' or '.join(missing)} image"
    small = [name for name, spectrum in spectra.items() if not spectrum.n_images]
    if small:
        return f"no {' or '.join(small)} image of the {split} split is at least {size}x{size} px"
    return None


def _judge(report: dict) -> Verdict:
    """Class-specific peaks are information, not a failure: they are what an artefact detector learns,
    and what resizing or re-encoding may erase (test robustness before trusting them)."""
    parts = []
    for name, other in (("fake", "real"), ("real", "fake")):
        peaks = report[f"{name}_only"]
        if peaks:
            strongest = peaks[0]
            parts.append(f"{len(peaks)} periodic peak(s) in {name}s that {other}s lack, strongest at "
                         f"{describe_frequency(strongest['fy'], strongest['fx'])} cycles/px "
                         f"(+{strongest['prominence_db']:.0f} dB)")  # fmt: skip
    if not parts:
        return Verdict(PASS, "no periodic peak tells the classes apart")
    return Verdict(INFO, "; ".join(parts))
