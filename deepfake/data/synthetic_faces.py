"""The embedded dataset's images: procedural faces and the traces a generator leaves on fakes.

"Real" images are procedural faces (skin-tone ellipse, hair, eyes, mouth, lighting, 1/f texture,
sensor noise). Fakes are drawn from the same face distribution, then pass through a simulated
generator that leaves the traces detectors learn on real GAN faces: transposed-convolution
upsampling whose uneven kernel overlap leaves checkerboards, a fixed periodic fingerprint, no sensor
noise and shifted colour statistics. The traces are sized to survive JPEG at quality ~95 and mild
rescaling, so a small CNN learns them in a few epochs, and to carry as much high-frequency energy as
a real's sensor noise: file size and colour statistics do not give fakes away (task=audit checks
that), only the traces' structure does. Some fakes are manipulated only inside a face region
(``partial``), with a mask. ``generator`` picks the family of traces: this one
(``transposed_conv``, the default) or another from :mod:`deepfake.data.generator_traces`
(``upsampling``, ``blending``), to measure generalisation across sources.
:mod:`deepfake.data.synthetic` writes them out in the Kaggle layout.
"""

from __future__ import annotations

import math

import numpy as np

from deepfake.data.generator_traces import FAMILIES

# What render_sample draws: a real face, a fake, or a real face edited inside a region.
REAL, FAKE, PARTIAL = "real", "fake", "partial"
_SKIN_LIGHT = np.array([0.96, 0.82, 0.72], np.float32)
_SKIN_DARK = np.array([0.36, 0.23, 0.16], np.float32)
_HAIR = np.array(
    [[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.55, 0.38, 0.20], [0.85, 0.72, 0.45], [0.62, 0.60, 0.58]],
    np.float32,
)
_IRIS = np.array([[0.30, 0.18, 0.08], [0.20, 0.40, 0.60], [0.25, 0.45, 0.25], [0.12, 0.08, 0.05]], np.float32)
_EYE_WHITE = np.array([0.93, 0.91, 0.88], np.float32)
_PUPIL = np.array([0.03, 0.03, 0.03], np.float32)
_MOUTH_INSIDE = np.array([0.15, 0.05, 0.05], np.float32)
# A local edit covers a tenth to a quarter of the image: stronger traces keep it as learnable
# within a few epochs as a full fake, instead of leaving partial fakes to chance.
_EDIT_TRACE_STRENGTH = 1.6
# A fake's traces have this many times the standard deviation of the sensor noise its real
# counterpart would have: periodic patterns cost JPEG fewer bytes than white noise, and at this
# ratio reals and fakes have the same file sizes.
_TRACE_TO_NOISE = 1.5


def _fingerprint(period: int = 8) -> np.ndarray:
    """One fixed generator's periodic fingerprint (3 x period x period): shared by every fake, as
    by the images of one GAN.

    Built from the lowest harmonics of its period (8 and 4 pixels) so it survives the mild
    rescaling of random resized crops, which interpolates away energy near 2 pixels per cycle.
    A luminance pattern plus a red-blue one: JPEG's chroma subsampling keeps the latter at
    these periods, and natural content rarely has colour-opponent texture.
    """
    rng = np.random.default_rng(20240601)
    patterns = []
    for _ in range(2):
        spectrum = np.zeros((period, period), complex)
        for fy, fx in [(1, 1), (1, -1), (1, 2), (2, 1), (2, -1), (1, -2), (2, 2)]:
            spectrum[fy, fx] = np.exp(2j * math.pi * rng.uniform())
        tile = np.fft.ifft2(spectrum).real
        patterns.append(tile / tile.std())
    luminance, red_blue = patterns
    return np.stack([luminance + red_blue, luminance, luminance - red_blue]).astype(np.float32)


_FINGERPRINT = _fingerprint()


class _Canvas:
    """Pixel-centre coordinates in [0, 1] and anti-aliased shapes on them."""

    def __init__(self, size: int) -> None:
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.y, self.x = np.meshgrid(centres, centres, indexing="ij")
        self.size = size

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
        """Coverage in [0, 1] of a rotated ellipse, with about one pixel of soft edge."""
        cos, sin = math.cos(angle), math.sin(angle)
        dy, dx = self.y - cy, self.x - cx
        u = (dx * cos + dy * sin) / rx
        v = (dy * cos - dx * sin) / ry
        distance = (1.0 - np.sqrt(u * u + v * v)) * min(rx, ry) * self.size
        return np.clip(0.5 + distance, 0.0, 1.0)


def _paint(image: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` (3 values, or 3xHxW) over the 3xHxW ``image`` in place."""
    if colour.ndim == 1:
        colour = colour[:, None, None]
    image += coverage * (colour - image)


def _pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean unit-std noise with a 1/f amplitude spectrum, the texture statistics of natural images."""
    frequency = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    frequency[0, 0] = 1.0
    shape = frequency.shape
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / frequency
    spectrum[0, 0] = 0.0
    noise = np.fft.irfft2(spectrum, s=(size, size))
    return (noise / noise.std()).astype(np.float32)


def _draw_layout(rng: np.random.Generator, size: int) -> dict:
    """Everything about a portrait except the facial features: a partial fake keeps all of it."""
    tone = rng.uniform()
    ry = rng.uniform(0.25, 0.33)
    # Mostly a brightness change with a little hue jitter, so skin never turns green or blue.
    skin = ((1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK) * rng.uniform(0.9, 1.1) + rng.normal(0, 0.015, 3)
    return {
        "skin": np.clip(skin, 0, 1).astype(np.float32),
        "hair": np.clip(_HAIR[rng.integers(len(_HAIR))] * np.float32(rng.uniform(0.75, 1.2)), 0, 1),
        "long_hair": rng.uniform() < 0.5,
        "clothes": rng.uniform(0.05, 0.9, 3).astype(np.float32),
        "background": rng.uniform(0.1, 0.9, (2, 3)).astype(np.float32),
        "gradient_angle": rng.uniform(0, 2 * math.pi),
        "face": (rng.uniform(0.46, 0.55), rng.uniform(0.42, 0.58), ry, ry * rng.uniform(0.72, 0.86)),
        "tilt": rng.uniform(-0.2, 0.2),
        "light_angle": rng.uniform(0, 2 * math.pi),
        "light_strength": rng.uniform(0.0, 0.35),
        "exposure": rng.uniform(0.8, 1.15),
        "background_texture": _pink_noise(rng, size) * rng.uniform(0.03, 0.1),
        "skin_texture": _pink_noise(rng, size) * rng.uniform(0.02, 0.05),
        "sensor_noise": rng.uniform(0.02, 0.04),
    }


def _draw_features(rng: np.random.Generator) -> dict:
    """Eyes, brows, nose and mouth: what a partial fake re-synthesises."""
    return {
        "eye_spacing": rng.uniform(0.34, 0.46),
        "eye_height": rng.uniform(-0.22, -0.06),
        "eye_size": rng.uniform(0.12, 0.18),
        "iris": _IRIS[rng.integers(len(_IRIS))],
        "brow_tilt": rng.uniform(-0.25, 0.25),
        "mouth_height": rng.uniform(0.42, 0.58),
        "mouth_width": rng.uniform(0.26, 0.42),
        "mouth_open": rng.uniform(0.0, 0.1),
        "lip_tint": rng.uniform(0.55, 0.8),
    }


def _render(canvas: _Canvas, layout: dict, features: dict) -> np.ndarray:
    """The portrait as float32 3xHxW in [0, 1] (channels first: numpy blends it 4x faster)."""
    x, y = canvas.x, canvas.y
    cy, cx, ry, rx = layout["face"]
    tilt = layout["tilt"]
    cos, sin = math.cos(tilt), math.sin(tilt)

    def on_face(across: float, down: float) -> tuple[float, float]:
        """A point given in face radii from the face centre, following the head's tilt."""
        return cy + across * rx * sin + down * ry * cos, cx + across * rx * cos - down * ry * sin

    angle = layout["gradient_angle"]
    ramp = np.clip(0.5 + (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle), 0, 1, dtype=np.float32)
    low, high = layout["background"][:, :, None, None]
    image = (1 - ramp) * low + ramp * high + layout["background_texture"]
    if layout["long_hair"]:
        _paint(image, canvas.ellipse(cy + 0.35 * ry, cx, ry * 1.45, rx * 1.3, tilt), layout["hair"])
    _paint(image, canvas.ellipse(1.08, cx, 0.28, 0.48), layout["clothes"])
    _paint(image, canvas.ellipse(*on_face(0, 0.95), ry * 0.5, rx * 0.45), layout["skin"] * 0.8)
    _paint(image, canvas.ellipse(*on_face(0, -0.15), ry * 1.08, rx * 1.14, tilt), layout["hair"])

    # Shading: darker towards the rim of the face, brighter on the side the light comes from.
    rim = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    light = math.cos(layout["light_angle"]) * (x - cx) / rx + math.sin(layout["light_angle"]) * (y - cy) / ry
    shade = 1.0 - 0.25 * rim + layout["light_strength"] * light + layout["skin_texture"]
    face = canvas.ellipse(cy, cx, ry, rx, tilt)
    _paint(image, face, layout["skin"][:, None, None] * shade)
    _paint(image, face * canvas.ellipse(*on_face(0, -1.0), ry * 0.42, rx * 1.05, tilt), layout["hair"])

    radius = features["eye_size"] * rx
    for side in (-1, 1):
        ey, ex = on_face(side * features["eye_spacing"], features["eye_height"])
        brow = on_face(side * features["eye_spacing"], features["eye_height"] - 0.2)
        brow_angle = tilt + side * features["brow_tilt"]
        _paint(image, canvas.ellipse(*brow, 0.018, radius * 1.3, brow_angle), layout["hair"] * 0.8)
        _paint(image, canvas.ellipse(ey, ex, radius * 0.6, radius, tilt), _EYE_WHITE)
        _paint(image, canvas.ellipse(ey, ex, radius * 0.5, radius * 0.5), features["iris"])
        _paint(image, canvas.ellipse(ey, ex, radius * 0.22, radius * 0.22), _PUPIL)
    nose = canvas.ellipse(*on_face(0, 0.15), ry * 0.16, rx * 0.07, tilt)
    _paint(image, 0.5 * nose, layout["skin"] * 0.7)
    mouth = on_face(0, features["mouth_height"])
    width, opening = rx * features["mouth_width"], ry * features["mouth_open"]
    lips = layout["skin"] * np.float32([1.0, features["lip_tint"], features["lip_tint"]])
    _paint(image, canvas.ellipse(*mouth, ry * 0.07 + 0.5 * opening, width, tilt), lips)
    if opening > 0.04 * ry:
        _paint(image, canvas.ellipse(*mouth, opening * 0.5, width * 0.75, tilt), _MOUTH_INSIDE)
    return np.clip(image * np.float32(layout["exposure"]), 0, 1)


def _partial_region(canvas: _Canvas, layout: dict, features: dict, rng: np.random.Generator) -> np.ndarray:
    """A binary mask over the face, the eye band or the mouth and chin: where a face edit lands."""
    cy, cx, ry, rx = layout["face"]
    tilt = layout["tilt"]
    region = rng.integers(3)
    if region == 0:
        coverage = canvas.ellipse(cy, cx, ry * 1.02, rx * 1.02, tilt)
    elif region == 1:
        band_y = cy + (features["eye_height"] - 0.05) * ry * math.cos(tilt)
        coverage = canvas.ellipse(band_y, cx, ry * 0.55, rx * 1.1, tilt)
    else:
        chin_y = cy + 0.55 * ry * math.cos(tilt)
        coverage = canvas.ellipse(chin_y, cx, ry * 0.6, rx * 0.9, tilt)
    return coverage > 0.5


def _upsample_last_axis(low: np.ndarray, taps: tuple[float, float, float]) -> np.ndarray:
    """Stride-2 transposed convolution (kernel 3) along the last axis: even outputs take the
    centre tap of one input, odd outputs the two side taps of two neighbouring inputs."""
    after = np.concatenate([low[..., 1:], low[..., -1:]], axis=-1)
    upsampled = np.empty(low.shape[:-1] + (2 * low.shape[-1],), low.dtype)
    upsampled[..., 0::2] = taps[1] * low
    upsampled[..., 1::2] = taps[2] * low + taps[0] * after
    return upsampled


def _upsample(low: np.ndarray, taps: tuple[float, float, float]) -> np.ndarray:
    rows_done = _upsample_last_axis(low.swapaxes(1, 2), taps).swapaxes(1, 2)
    return _upsample_last_axis(rows_done, taps)


def _generator_traces(
    image: np.ndarray, rng: np.random.Generator, noise_level: float, strength: float = 1.0
) -> np.ndarray:
    """Re-synthesise ``image`` the way an upsampling GAN generator would; the traces' energy is that
    of sensor noise of ``noise_level``, times ``strength``."""
    _, height, width = image.shape
    pad = (-height) % 4, (-width) % 4
    padded = np.pad(image, ((0, 0), (0, pad[0]), (0, pad[1])), mode="edge")
    low = padded.reshape(3, padded.shape[1] // 4, 4, padded.shape[2] // 4, 4).mean(axis=(2, 4))
    # Two stride-2 transposed convs whose side taps do not add up to the centre tap: the gain
    # alternates every pixel of each stage, leaving periods of 2 and 4 pixels in the output.
    # Scaled to unit mean gain, so the artefact is a pattern and not a brightness change.
    uneven, even = low, low
    for _ in range(2):
        imbalance, share = rng.uniform(0.2, 0.3), rng.uniform(0.3, 0.7)
        taps = np.array([0.5 + imbalance * share, 1.0, 0.5 + imbalance * (1 - share)]) / (1 + imbalance / 2)
        uneven = _upsample(uneven, tuple(taps))
        even = _upsample(even, (0.5, 1.0, 0.5))
    # Added to the full-resolution image rather than replacing it: a GAN hallucinates detail, so
    # blur alone must not give fakes away.
    period = _FINGERPRINT.shape[1]
    fingerprint = np.tile(_FINGERPRINT, (1, height // period + 1, width // period + 1))[:, :height, :width]
    traces = (uneven - even)[:, :height, :width] + np.float32(rng.uniform(0.025, 0.04)) * fingerprint
    rms = np.sqrt(np.mean(traces**2)) + 1e-8
    fake = image + traces * np.float32(strength * _TRACE_TO_NOISE * noise_level / rms)
    luminance = fake.mean(axis=0, keepdims=True)
    fake = luminance + (fake - luminance) * np.float32(rng.uniform(0.97, 1.12))
    return np.clip(fake, 0, 1)


def _ignoring_noise_level(family):
    """The other families size their traces themselves: they take (image, rng, strength)."""
    return lambda image, rng, noise_level, strength=1.0: family(image, rng, strength)


# generator family -> traces(image, rng, noise_level, strength): the default sizes its traces to the
# image's sensor noise, so that high-frequency energy does not tell fakes from reals (task=audit).
GENERATORS = {"transposed_conv": _generator_traces, **{name: _ignoring_noise_level(f) for name, f in FAMILIES.items()}}


def render_sample(
    kind: str, size: int, rng: np.random.Generator, generator: str = "transposed_conv"
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image as uint8 HxWx3 and, for a partial fake, its bool mask (True = manipulated)."""
    traces = GENERATORS[generator]
    canvas = _Canvas(size)
    layout = _draw_layout(rng, size)
    features = _draw_features(rng)
    photo = _render(canvas, layout, features)
    noisy = photo + rng.normal(0.0, layout["sensor_noise"], photo.shape).astype(np.float32)
    mask = None
    if kind == REAL:
        image = noisy
    elif kind == FAKE:
        image = traces(photo, rng, layout["sensor_noise"])
    else:
        edited = _render(canvas, layout, _draw_features(rng))
        edited = traces(edited, rng, layout["sensor_noise"], _EDIT_TRACE_STRENGTH)
        mask = _partial_region(canvas, layout, features, rng)
        image = np.where(mask, edited, noisy)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0), mask
