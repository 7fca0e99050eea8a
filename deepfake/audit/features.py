"""Facts about an image file that say nothing about the face in it.

If real and fake images differ in how they were stored (JPEG quality, chroma subsampling, size,
metadata, naming) or in their global colour statistics, a detector can separate them without ever
looking at a face ("Fake or JPEG?", Grommelt et al. 2024). These are the features of the shortcut
baseline, grouped so the report can say which kind of shortcut is there.
"""

from __future__ import annotations

import os
from pathlib import PurePath

import numpy as np
import pandas as pd
from PIL import Image, ImageStat, JpegImagePlugin

# The example tables of the JPEG standard (Annex K), natural order; libjpeg and Pillow scale them
# by the quality setting, so the setting can be read back from a file's tables.
_LUMINANCE_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], np.float64)  # fmt: skip


def _ijg_tables() -> np.ndarray:
    """The luminance table libjpeg writes for each quality 1..100 (row q-1), baseline-clipped."""
    quality = np.arange(1, 101, dtype=np.float64)
    scale = np.where(quality < 50, 5000 / quality, 200 - 2 * quality)
    tables = np.floor((_LUMINANCE_TABLE[None, :] * scale[:, None] + 50) / 100)
    return np.clip(tables, 1, 255)


_IJG_TABLES = _ijg_tables()

# Codes for the categorical facts; anything else is "other" (the last code).
_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_MODES = ("RGB", "L", "RGBA", "P", "CMYK", "YCbCr", "LA", "I;16", "I", "F")
_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Feature group -> columns of the feature table. Each group is scored on its own too, so a report
# can say "the file size alone gives it away".
FEATURE_GROUPS = {
    "file size": ["bytes", "bytes_per_pixel"],
    "JPEG settings": ["format", "jpeg_quality", "chroma_subsampling", "progressive"],
    "geometry and mode": ["width", "height", "mode"],
    "metadata": ["exif", "icc"],
    "file name": ["name_length", "name_digits_only", "name_digits", "name_upper", "name_lower", "name_other",
                  "extension"],
    "colour statistics": ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"],
}  # fmt: skip
FEATURES = [column for columns in FEATURE_GROUPS.values() for column in columns]
HEADER_COLUMNS = ["format", "width", "height", "mode", "mode_name", "jpeg_quality", "chroma_subsampling",
                  "progressive", "exif", "icc"]  # fmt: skip
COLOUR_COLUMNS = FEATURE_GROUPS["colour statistics"]


def _code(value: str | None, known: tuple[str, ...]) -> int:
    return known.index(value) if value in known else len(known)


def jpeg_quality(quantization: dict | None) -> float:
    """The libjpeg quality setting whose luminance table is closest to the file's; NaN without tables.

    Exact for files written by libjpeg/Pillow/OpenCV; for encoders with their own tables (cameras,
    Photoshop) it is the nearest equivalent, which still tells two sources apart.
    """
    if not quantization or 0 not in quantization or len(quantization[0]) != 64:
        return float("nan")
    table = np.asarray(quantization[0], np.float64)
    distance = np.abs(np.log(_IJG_TABLES) - np.log(np.maximum(table, 1))[None, :]).sum(axis=1)
    return float(np.argmin(distance) + 1)


def header_facts(image: Image.Image) -> dict:
    """What the file's header says (nothing is decoded): format, size, mode, JPEG settings, metadata."""
    is_jpeg = image.format == "JPEG"
    info = image.info
    return {
        "format": _code(image.format, _FORMATS),
        "width": image.width,
        "height": image.height,
        "mode": _code(image.mode, _MODES),
        "mode_name": image.mode,
        "jpeg_quality": jpeg_quality(getattr(image, "quantization", None)) if is_jpeg else float("nan"),
        # -1 when unknown (not a JPEG, or greyscale); 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0.
        "chroma_subsampling": JpegImagePlugin.get_sampling(image) if is_jpeg else -1,
        "progressive": int(bool(info.get("progressive") or info.get("progression"))),
        "exif": int(bool(info.get("exif"))),
        "icc": int(bool(info.get("icc_profile"))),
    }


def colour_facts(rgb: Image.Image) -> dict:
    """Mean and standard deviation of each channel of an RGB image, in [0, 1] (from its histograms)."""
    stats = ImageStat.Stat(rgb)
    return {f"{stat}_{channel}": value / 255.0 for stat, values in (("mean", stats.mean), ("std", stats.stddev))
            for channel, value in zip("rgb", values)}  # fmt: skip


def name_features(paths: pd.Series) -> pd.DataFrame:
    """The pattern of each file's name (not its folders: those are the dataset's own layout)."""
    names = paths.map(lambda path: PurePath(path).name)
    stems = names.map(lambda name: os.path.splitext(name)[0])
    extensions = names.map(lambda name: os.path.splitext(name)[1].lower())
    return pd.DataFrame({
        "name_length": stems.str.len(),
        "name_digits_only": stems.str.fullmatch(r"\d+").astype(int),
        "name_digits": stems.str.count(r"\d"),
        "name_upper": stems.str.count(r"[A-Z]"),
        "name_lower": stems.str.count(r"[a-z]"),
        "name_other": stems.str.count(r"[^A-Za-z0-9]"),
        "extension": extensions.map(lambda ext: _code(ext, _EXTENSIONS)),
    }, index=paths.index)  # fmt: skip


def feature_table(facts: pd.DataFrame) -> pd.DataFrame:
    """Every shortcut feature of every image (NaN where an image could not be read)."""
    table = facts.reindex(columns=FEATURES).astype(float)
    table["bytes_per_pixel"] = facts["bytes"] / (facts["width"] * facts["height"])
    table[FEATURE_GROUPS["file name"]] = name_features(facts["path"]).astype(float)
    return table
