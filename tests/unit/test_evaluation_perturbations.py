"""Each robustness perturbation changes the pixels the way it claims, and does so deterministically."""

import numpy as np
import pytest
from PIL import Image

from deepfake.errors import ConfigError
from deepfake.evaluation.perturbations import Perturbation, perturbations_from


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """Smooth shading plus fine texture (the high frequencies a detector and these tests care about)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64] / 64
    base = 0.3 + 0.4 * np.stack([x, y, (x + y) / 2], axis=-1)
    pixels = np.clip(base + rng.normal(0, 0.08, base.shape), 0, 1)
    return Image.fromarray((pixels * 255).round().astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def high_frequency_energy(image: Image.Image) -> float:
    """Spectral energy above a quarter of the sampling rate, on the grey image."""
    grey = pixels(image).mean(axis=2)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(64)), np.fft.fftshift(np.fft.fftfreq(64)), indexing="ij")
    return float(spectrum[np.hypot(fy, fx) > 0.25].sum())


def test_none_returns_the_same_pixels(photo):
    assert np.array_equal(pixels(Perturbation("none")(photo)), pixels(photo))


def test_jpeg_quality_30_differs_from_the_source_more_than_quality_90(photo):
    q90, q30 = Perturbation("jpeg", 90)(photo), Perturbation("jpeg", 30)(photo)
    error90 = np.abs(pixels(q90) - pixels(photo)).mean()
    error30 = np.abs(pixels(q30) - pixels(photo)).mean()
    assert error30 > error90 > 0
    # Coarse quantisation throws the fine texture away.
    assert high_frequency_energy(q30) < 0.5 * high_frequency_energy(photo)
    assert q30.size == photo.size and q30.mode == "RGB"


def test_blur_removes_high_frequency_energy_more_with_a_larger_sigma(photo):
    energies = [high_frequency_energy(Perturbation("blur", sigma)(photo)) for sigma in (1, 2, 3)]
    assert energies[0] < 0.2 * high_frequency_energy(photo)
    assert energies[0] > energies[1] > energies[2]
    # Low frequencies (the picture itself) stay: the mean colour barely moves.
    assert np.abs(pixels(Perturbation("blur", 3)(photo)).mean((0, 1)) - pixels(photo).mean((0, 1))).max() < 2


def test_rescale_keeps_the_size_and_loses_detail(photo):
    half, quarter = Perturbation("rescale", 0.5)(photo), Perturbation("rescale", 0.25)(photo)
    assert half.size == quarter.size == photo.size
    assert high_frequency_energy(photo) > high_frequency_energy(half) > high_frequency_energy(quarter)


def test_noise_has_the_claimed_sigma_and_repeats_exactly():
    grey = Image.new("RGB", (64, 64), (128, 128, 128))  # mid-grey: no clipping
    noisy = Perturbation("noise", 0.05, seed=1)(grey)
    difference = (pixels(noisy) - 128) / 255
    assert difference.std() == pytest.approx(0.05, rel=0.05)
    assert np.array_equal(pixels(noisy), pixels(Perturbation("noise", 0.05, seed=1)(grey)))
    assert not np.array_equal(pixels(noisy), pixels(Perturbation("noise", 0.05, seed=2)(grey)))


def test_the_default_list_runs_from_the_reference_to_the_harshest():
    chosen = perturbations_from({"jpeg": [30, 90, 70], "blur": [3, 1], "rescale": [0.25, 0.5], "noise": [0.05, 0.02]})
    assert [p.name for p in chosen] == ["none", "jpeg_90", "jpeg_70", "jpeg_30", "blur_1", "blur_3",
                                        "rescale_0.5", "rescale_0.25", "noise_0.02", "noise_0.05"]  # fmt: skip


@pytest.mark.parametrize(("settings", "message"), [
    ({"sharpen": [1]}, "eval.perturbations.sharpen: unknown"),
    ({"jpeg": [0]}, "eval.perturbations.jpeg=0: JPEG quality"),
    ({"rescale": [2]}, "eval.perturbations.rescale=2: "),
    ({"jpeg": ["abc"]}, "eval.perturbations.jpeg='abc': "),  # float()'s ValueError traceback
    ({"blur": [None]}, "eval.perturbations.blur=None: "),  # float()'s TypeError traceback
    ({"noise": [True]}, "eval.perturbations.noise=True: "),  # YAML's true was a sigma of 1.0
    ({"jpeg": [95.7]}, "a JPEG quality is a whole number"),  # was run at 95 and named jpeg_95.7
    ({"blur": 2}, "must be a list"),
])  # fmt: skip
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        perturbations_from(settings)
