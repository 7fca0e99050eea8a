"""Image degradations for robustness tests (the CNNDetection protocol, applied at test time).

Each one takes the decoded RGB PIL image, before the model's own resize, crop and normalisation,
and returns another. All are deterministic: the only random one (noise) seeds its generator from
the run's seed and the image's own pixels, so a rerun, another batch order or DataLoader workers
give the same pixels.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageFilter

from deepfake.errors import ConfigError

# kind -> (what the severity means, its valid range (inclusive), whether larger is more severe)
KINDS = {
    "jpeg": ("JPEG quality", (1, 100), False),
    "blur": ("Gaussian blur sigma (pixels)", (0.0, 50.0), True),
    "rescale": ("down-then-up scale factor", (0.01, 1.0), False),
    "noise": ("Gaussian noise sigma (pixels in [0, 1])", (0.0, 1.0), True),
}


class Perturbation:
    """One degradation at one severity; ``kind="none"`` returns the image unchanged (the reference)."""

    def __init__(self, kind: str, severity: float | None = None, seed: int = 0) -> None:
        if kind != "none":
            if kind not in KINDS:
                raise ConfigError(f"eval.perturbations.{kind}: unknown perturbation; use {', '.join(KINDS)}")
            low, high = KINDS[kind][1]
            given = severity
            try:  # from the config: a mistyped severity is text (or null) here, and fails as nan does
                severity = math.nan if isinstance(given, bool) else float(given)
            except (TypeError, ValueError):
                severity = math.nan
            if not low <= severity <= high:
                raise ConfigError(f"eval.perturbations.{kind}={given!r}: {KINDS[kind][0]} must be in [{low}, {high}]")
            if kind == "jpeg" and severity != int(severity):  # Pillow takes whole qualities
                raise ConfigError(f"eval.perturbations.jpeg={severity!r}: a JPEG quality is a whole number")
        self.kind, self.severity, self.seed = kind, severity, int(seed)

    @property
    def name(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}_{self.severity:g}"

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if self.kind == "jpeg":
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(self.severity))
            buffer.seek(0)
            with Image.open(buffer) as decoded:
                return decoded.convert("RGB")
        if self.kind == "blur":
            return image.filter(ImageFilter.GaussianBlur(radius=float(self.severity)))  # radius is the sigma
        if self.kind == "rescale":
            small = (max(1, round(image.width * self.severity)), max(1, round(image.height * self.severity)))
            return image.resize(small, Image.Resampling.BILINEAR).resize(image.size, Image.Resampling.BILINEAR)
        if self.kind == "noise":
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            rng = np.random.default_rng([self.seed, zlib.crc32(pixels.tobytes())])
            noisy = pixels + rng.normal(0.0, float(self.severity), pixels.shape)
            return Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8))
        return image

    def __repr__(self) -> str:
        return f"Perturbation({self.name})"


def perturbations_from(settings: Mapping[str, Sequence[float]], seed: int = 0) -> list[Perturbation]:
    """``{kind: [severity, ...]}`` -> the reference (``none``) first, then each kind from mild to severe."""
    chosen = [Perturbation("none")]
    for kind, severities in settings.items():
        if isinstance(severities, (str, bytes)) or not isinstance(severities, Sequence):
            raise ConfigError(f"eval.perturbations.{kind}={severities!r} must be a list of severities")
        items = [Perturbation(kind, severity, seed) for severity in severities]
        harsher_is_larger = KINDS[kind][2] if kind in KINDS else True
        chosen.extend(sorted(items, key=lambda p: p.severity, reverse=not harsher_is_larger))
    return chosen
