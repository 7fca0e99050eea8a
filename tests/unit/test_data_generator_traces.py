"""The synthetic generator's families leave different traces, and the setting reaches the dataset."""

import numpy as np
import pandas as pd
import pytest

from deepfake.data.generator_traces import PEAK_FREQUENCY
from deepfake.data.synthetic import generate_synthetic_dataset
from deepfake.data.synthetic_faces import GENERATORS, _Canvas, _draw_features, _draw_layout, _render
from deepfake.errors import ConfigError

SIZE = 64


def residuals(family: str, n: int = 6) -> np.ndarray:
    """(n, 3, H, W): each family's fake minus the clean rendering it was made from."""
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        layout = _draw_layout(rng, SIZE)
        photo = _render(_Canvas(SIZE), layout, _draw_features(rng))
        out.append(GENERATORS[family](photo.copy(), rng, layout["sensor_noise"]) - photo)
    return np.stack(out)


def mean_power(residual: np.ndarray) -> np.ndarray:
    """Mean power spectrum of the grey residuals, (H, W) indexed by FFT bin."""
    grey = residual.mean(axis=1)
    return (np.abs(np.fft.fft2(grey)) ** 2).mean(axis=0)


def peak_share(power: np.ndarray, bins: list[tuple[int, int]]) -> float:
    """Share of the non-DC power that lies in ``bins`` (and their mirror images)."""
    total = power.sum() - power[0, 0]
    picked = {(fy % SIZE, fx % SIZE) for fy, fx in bins} | {(-fy % SIZE, -fx % SIZE) for fy, fx in bins}
    return sum(power[b] for b in picked) / total


def test_three_families_at_least():
    assert {"transposed_conv", "upsampling", "blending"} <= set(GENERATORS)


def test_transposed_conv_energy_sits_on_its_periods_and_upsampling_on_its_own_peak():
    checkerboard = [(0, SIZE // 2), (SIZE // 2, 0), (SIZE // 2, SIZE // 2), (0, SIZE // 4), (SIZE // 4, 0)]
    peak = [(round(PEAK_FREQUENCY[0] * SIZE), round(PEAK_FREQUENCY[1] * SIZE))]
    transposed, upsampled, blended = (mean_power(residuals(f)) for f in ("transposed_conv", "upsampling", "blending"))
    # Each family's periodic trace is where it claims, and the others have (almost) nothing there.
    assert peak_share(upsampled, peak) > 0.2
    assert peak_share(transposed, peak) < 0.01 and peak_share(blended, peak) < 0.01
    assert peak_share(transposed, checkerboard) > 0.05
    assert peak_share(blended, checkerboard) < 0.01


def test_blending_edits_the_centre_and_leaves_only_sensor_noise_at_the_edges():
    residual = residuals("blending")
    centre = residual[:, :, 24:40, 24:40]
    corners = np.concatenate([residual[:, :, :8, :8], residual[:, :, -8:, -8:]], axis=2)
    # Inside: the pasted face's colour shift (per channel, up to a few percent); outside: zero-mean noise.
    assert np.abs(centre.mean(axis=(2, 3))).max(axis=1).min() > 0.01
    assert np.abs(corners.mean(axis=(2, 3))).max() < 0.005
    assert 0.005 < corners.std() < 0.025


def test_the_generator_setting_reaches_the_dataset(tmp_path):
    tiny = dict(n_train=4, n_valid=2, n_test=2, image_size=32)
    default = generate_synthetic_dataset(tmp_path / "default", **tiny)
    blending = generate_synthetic_dataset(tmp_path / "blending", **tiny, generator="blending")
    frames = [pd.read_csv(root / "train.csv") for root in (default, blending)]
    fakes = frames[0]["label"] == 0
    first_fake = frames[0]["path"][fakes].iloc[0]
    same_name_other_bytes = (default / "real_vs_fake/real-vs-fake" / first_fake).read_bytes() != (
        blending / "real_vs_fake/real-vs-fake" / frames[1]["path"][fakes].iloc[0]).read_bytes()  # fmt: skip
    assert same_name_other_bytes
    with pytest.raises(ConfigError, match="generator='gan' is unknown"):
        generate_synthetic_dataset(tmp_path / "bad", **tiny, generator="gan")
