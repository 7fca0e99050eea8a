"""More generator families for the synthetic set, each leaving its own kind of trace, so that
"train on one generator, test on the others" can be measured offline.

The default family, ``transposed_conv`` (checkerboards from uneven transposed-convolution kernels,
a periodic fingerprint, shifted colour statistics), lives in ``synthetic_faces.py``. Here:

- ``upsampling``: the generator works at half resolution and enlarges its output by nearest or
  bilinear interpolation (pixel replicas or interpolation smoothing), and adds its fingerprint: one
  fixed cosine, a single spectral peak at a frequency the transposed-conv family does not use;
- ``blending``: no upsampling at all. A face from another source (smoother: no sensor noise and
  less fine detail) has its colour statistics transferred to a fixed reference, as a face-swap
  pipeline's colour correction does, and is alpha-blended over the centre of a genuine noisy photo
  through a feathered ellipse: the traces are a seam, colours that are always alike, and a noise
  and detail level that changes across the seam.

Each takes the clean rendering (float32 3xHxW in [0, 1]), the image's generator and a strength
(local edits use stronger traces), and returns the fake in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np

# The spectral peak of the upsampling family, in cycles per pixel (down, across): odd sixteenths,
# which the transposed-conv family never uses (its fingerprint and checkerboard sit at multiples
# of 1/8), on an exact FFT bin of any image whose side is a multiple of 16. It survives JPEG at 95.
PEAK_FREQUENCY = (1 / 16, 3 / 16)
# As strong as the transposed-conv fingerprint (RMS ~0.035), and, like it, in a fixed phase: the
# same pattern in every fake, as one generator's fingerprint is.
_PEAK_AMPLITUDE = 0.05


def _half_resolution(image: np.ndarray) -> np.ndarray:
    """2x2 box average (edge-padded to even sizes)."""
    _, height, width = image.shape
    padded = np.pad(image, ((0, 0), (0, height % 2), (0, width % 2)), mode="edge")
    return padded.reshape(3, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2).mean(axis=(2, 4))


def _bilinear_double(low: np.ndarray) -> np.ndarray:
    """x2 bilinear upsampling with half-pixel centres (as torch's align_corners=False)."""

    def along_last(values: np.ndarray) -> np.ndarray:
        before = np.concatenate([values[..., :1], values[..., :-1]], axis=-1)
        after = np.concatenate([values[..., 1:], values[..., -1:]], axis=-1)
        doubled = np.empty(values.shape[:-1] + (2 * values.shape[-1],), values.dtype)
        doubled[..., 0::2] = 0.75 * values + 0.25 * before
        doubled[..., 1::2] = 0.75 * values + 0.25 * after
        return doubled

    return along_last(along_last(low.swapaxes(1, 2)).swapaxes(1, 2))


def upsampling_traces(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    _, height, width = image.shape
    low = _half_resolution(image)
    # Nearest (every pixel a 2x2 block) or bilinear, at random.
    enlarged = low.repeat(2, axis=1).repeat(2, axis=2) if rng.uniform() < 0.5 else _bilinear_double(low)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    peak = np.cos(2 * math.pi * (PEAK_FREQUENCY[0] * y + PEAK_FREQUENCY[1] * x))
    amplitude = np.float32(strength * _PEAK_AMPLITUDE * rng.uniform(0.8, 1.2))
    return np.clip(enlarged[:, :height, :width] + amplitude * peak[None], 0, 1)


# The colour statistics a blending pipeline's colour correction aims at (a light skin tone).
_REFERENCE_MEAN = np.array([0.72, 0.55, 0.46], np.float32)[:, None, None]
_REFERENCE_STD = np.array([0.10, 0.09, 0.09], np.float32)[:, None, None]


def _feathered_ellipse(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Blend weights: 1 inside an ellipse around the image centre (where faces are), 0 outside,
    a soft edge of a few pixels between."""
    y, x = (np.mgrid[0:height, 0:width] + 0.5) / np.array([height, width])[:, None, None]
    cy, cx = 0.5 + rng.uniform(-0.04, 0.04, 2)
    ry, rx = rng.uniform(0.28, 0.36), rng.uniform(0.22, 0.30)
    distance = 1.0 - np.hypot((y - cy) / ry, (x - cx) / rx)  # > 0 inside
    feather = rng.uniform(2.0, 4.0) / (min(ry, rx) * min(height, width))
    return np.clip(distance / feather, 0, 1).astype(np.float32)


def _box_blur(image: np.ndarray) -> np.ndarray:
    """3x3 mean (edge-padded): the pasted face's softer detail."""
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1)), mode="edge")
    _, height, width = image.shape
    return sum(padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / np.float32(9)


def blending_traces(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    _, height, width = image.shape
    host = image + rng.normal(0.0, rng.uniform(0.008, 0.02), image.shape).astype(np.float32)
    weight = _feathered_ellipse(height, width, rng)[None]
    donor = _box_blur(image)
    inside = weight[0] > 0.5
    mean, std = donor[:, inside].mean(axis=1), donor[:, inside].std(axis=1) + 1e-3
    # Colour transfer (per-channel mean and spread) towards the pipeline's reference statistics.
    transferred = (donor - mean[:, None, None]) / std[:, None, None] * _REFERENCE_STD + _REFERENCE_MEAN
    donor = donor + np.float32(min(1.0, 0.8 * strength)) * (transferred - donor)
    return np.clip(host * (1 - weight) + donor * weight, 0, 1)


# name -> traces(image, rng, strength); synthetic_faces.py adds its own transposed_conv family.
FAMILIES = {"upsampling": upsampling_traces, "blending": blending_traces}
