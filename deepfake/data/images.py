"""Load any image file as an RGB PIL image; a damaged file becomes a black image and a reason.

A dataset of 140k scraped files always holds a few broken ones; one of them must not end a
multi-hour run. The caller gets the reason so it can log the path and carry on.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# What counts as an image file when a folder is listed (the manifest, task=predict).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Single-channel integer modes hold 16-bit samples (PNG stores them this way); PIL's own conversion to
# "L" clips at 255 instead of rescaling, which would turn most such images white. A 16-bit colour PNG
# (48-bit RGB, 64-bit RGBA, grey with alpha) never reaches these modes: Pillow decodes it to 8 bits
# itself, keeping each sample's high byte, so it is not rescaled the same way (v >> 8, not v / 257).
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# What load_rgb does before any resizing, in words for model.json and the model card: a consumer of
# an exported model who skips one of these scores some images differently (an EXIF-rotated photo, a
# 16-bit PNG that PIL's own convert("RGB") turns white, a transparent PNG). Each rule states the very
# operation (truncation, rounding, which byte), since one value off by 1 changes a score.
DECODE_RULES = (
    "decoded with Pillow (the first frame of an animated file; ICC profiles ignored); turned upright as its "
    "EXIF orientation says (PIL.ImageOps.exif_transpose); made 8-bit RGB: single-channel 16-bit and 32-bit "
    "integer samples (Pillow modes I;16 and I) divided by 257, clipped to 0..255 and rounded to the nearest "
    "integer; single-channel float samples (mode F) clipped to 0..255 and truncated toward zero; 16-bit colour "
    "PNGs (RGB, RGBA, grey with alpha) as Pillow decodes them, keeping each sample's high byte (v >> 8), not "
    "divided by 257; transparent pixels composited over black (8-bit alpha, PIL.Image.alpha_composite); every "
    "other mode by PIL's convert('RGB')"
)


def _black_image(size: int) -> Image.Image:
    """The stand-in for a damaged image: black, RGB, ``size`` x ``size``."""
    return Image.new("RGB", (size, size))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to RGB; transparent pixels become black. Float samples are
    truncated (astype), 16-bit ones rounded: DECODE_RULES says so rather than changing the pixels, and
    so the scores, of models already trained on them."""
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:  # a PNG's tRNS colour key
        image = image.convert("RGBA")
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        samples = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(samples, 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in _ALPHA_MODES:
        # Over black, as the fallback for damaged files is black too: the model sees one
        # "no content" colour rather than whatever colour the transparent pixels happen to store.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says; as stored when its EXIF block cannot be parsed.

    Pillow's EXIF parser raises assorted errors on a damaged block (struct.error, TypeError,
    KeyError...), after the pixels themselves decoded fine: losing the image, or the run, to one bad
    metadata byte would be worse than showing it as stored.
    """
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _damage_reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "missing file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (unknown format)"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large to decode safely ({error})"
    # Truncated and corrupt streams surface as OSError (or, for some plugins, ValueError or
    # SyntaxError) only once the pixels are decoded in load().
    return f"unreadable: {type(error).__name__}: {error}"


# Everything a damaged file raises while it is opened and decoded (DecompressionBombError and
# UnidentifiedImageError are among these).
_DAMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_rgb(path: str | os.PathLike, fallback_size: int = 256) -> tuple[Image.Image, str | None]:
    """Decode ``path`` as RGB with EXIF orientation applied.

    Returns ``(image, None)``, or ``(black fallback_size x fallback_size image, reason)`` when the
    file is missing, empty, truncated, not an image or otherwise unreadable.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return _black_image(fallback_size), "empty file (0 bytes)"
        with warnings.catch_warnings():
            # Pillow warns on benign oddities (EXIF quirks, palette transparency as bytes);
            # thousands of workers repeating them would drown the log.
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.load()
                return _to_rgb(upright(image)), None
    except _DAMAGE_ERRORS as error:
        return _black_image(fallback_size), _damage_reason(error)


def probe_image(path: str | os.PathLike) -> str | None:
    """Why ``load_rgb`` would substitute ``path``, or None; several times faster than loading it.

    JPEGs decode at 1/8 scale (libjpeg's DCT scaling still reads the whole stream, so truncation and
    corruption are caught) and nothing is converted.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
        return None
    except _DAMAGE_ERRORS as error:
        return _damage_reason(error)
