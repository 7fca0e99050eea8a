"""Spectra: the synthetic generator's period-8 fingerprint shows as peaks in fakes only."""

from __future__ import annotations

import numpy as np
import pytest
from audit_data import Item, faces, write_dataset

from deepfake.audit.spectra import azimuthal_average, class_spectrum, periodic_peaks, prominence_at, spectra_check

SIZE = 64
# The harmonics the generator's fingerprint is built from (deepfake.data.synthetic_faces._fingerprint), in
# cycles per pixel: multiples of 1/8 along each axis.
FINGERPRINT = [(1 / 8, 1 / 8), (1 / 8, -1 / 8), (1 / 8, 1 / 4), (1 / 4, 1 / 8), (1 / 4, -1 / 8), (1 / 8, -1 / 4),
               (1 / 4, 1 / 4)]  # fmt: skip
MIN_DB = 6.0


@pytest.fixture(scope="module")
def spectra(tmp_path_factory):
    """40 real and 40 fake synthetic faces at 64 px, stored as the generator stores them (JPEG q95)."""
    items = [Item(f"r{i}.jpg", False, pixels) for i, pixels in enumerate(faces(40, SIZE, 5, "real"))]
    items += [Item(f"f{i}.jpg", True, pixels) for i, pixels in enumerate(faces(40, SIZE, 6, "fake"))]
    root = write_dataset(tmp_path_factory.mktemp("spectra"), {"train": items})
    folder = root / "real_vs_fake" / "real-vs-fake" / "train"
    paths = {name: sorted(str(p) for p in (folder / name).glob("*.jpg")) for name in ("real", "fake")}
    return spectra_check(paths, SIZE, MIN_DB, threads=4)


def test_fingerprint_peaks_in_fakes_and_not_in_reals(spectra):
    report, by_class = spectra
    real, fake = by_class["real"].residual_log_magnitude, by_class["fake"].residual_log_magnitude
    fake_only = {(peak["fy"], peak["fx"]) for peak in report["fake_only"]}

    for fy, fx in FINGERPRINT:
        assert prominence_at(fake, fy, fx) >= MIN_DB, (fy, fx)
        assert prominence_at(real, fy, fx) < MIN_DB / 2, (fy, fx)
    assert set(FINGERPRINT) <= fake_only
    assert report["peaks"]["real"] == [] and report["real_only"] == []
    assert report["verdict"].level == "info" and "in fakes that reals lack" in report["verdict"].message


def test_upsampling_leaves_more_power_near_nyquist_in_fakes(spectra):
    report, _ = spectra
    real, fake = (np.array(report["radial_power"][name]) for name in ("real", "fake"))

    assert report["images"] == {"real": 40, "fake": 40}
    assert fake[-1] > 3 * real[-1]  # the period-2 checkerboard of the transposed convolutions


def test_a_pure_cosine_is_one_ring_and_one_peak():
    y, x = np.indices((SIZE, SIZE))
    grating = np.cos(2 * np.pi * (8 * y + 16 * x) / SIZE)
    power = np.abs(np.fft.fftshift(np.fft.fft2(grating))) ** 2

    radial = azimuthal_average(power)
    assert int(np.argmax(radial)) == round(np.hypot(8, 16))
    peaks = periodic_peaks(np.log(np.sqrt(power) + 1e-6), MIN_DB)
    assert [(p["fy"], p["fx"]) for p in peaks] == [(8 / SIZE, 16 / SIZE)]


def test_images_smaller_than_the_crop_are_skipped(tmp_path):
    root = write_dataset(tmp_path, {"train": [Item("small.jpg", False, faces(1, 32, 0)[0])]})
    path = str(root / "real_vs_fake" / "real-vs-fake" / "train" / "real" / "small.jpg")

    assert class_spectrum([path], SIZE, threads=1).n_images == 0
    assert class_spectrum([path], 32, threads=1).n_images == 1


def test_the_crop_fits_the_class_stored_smaller():
    """Reals of 32 px beside more fakes of 40 px: the pooled median (40) skipped every real image, and
    the check said "not measured" where the sizes already tell the classes apart."""
    from deepfake.audit.spectra import crop_size

    reals, fakes = [(32, 32)] * 10, [(40, 40)] * 30
    assert crop_size([reals, fakes], cap=256) == 32
    assert crop_size([fakes, [(48, 64)] * 5], cap=256) == 40  # the shorter side of each image
    assert crop_size([reals, fakes], cap=16) == 16
    assert crop_size([[], fakes], cap=256) == 40 and crop_size([[], []], cap=256) == 0


def test_a_class_without_images_is_told_from_images_too_small(tmp_path):
    """Both said "a class has no image of at least 32x32 px", also for a train split of reals only."""
    items = [Item("r.jpg", False, faces(1, 32, 0)[0]), Item("f.jpg", True, faces(1, 32, 1, "fake")[0])]
    folder = write_dataset(tmp_path, {"train": items}) / "real_vs_fake" / "real-vs-fake" / "train"
    real, fake = str(folder / "real" / "r.jpg"), str(folder / "fake" / "f.jpg")

    none, _ = spectra_check({"real": [real], "fake": []}, 32, MIN_DB, threads=1, split="train")
    small, _ = spectra_check({"real": [real], "fake": [fake]}, 64, MIN_DB, threads=1, split="train")

    assert none["verdict"].as_dict() == {"level": "warn", "message": "not measured: the train split has no "
                                         "readable fake image"}  # fmt: skip
    assert small["verdict"].message == "not measured: no real or fake image of the train split is at least 64x64 px"
