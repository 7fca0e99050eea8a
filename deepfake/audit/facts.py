"""One pass over every listed image: each file is read and decoded once for all the checks.

Per image: its size in bytes and sha256 (unless the manifest already has it), what its header says
(format, size, mode, JPEG quality and subsampling, metadata), the colour statistics of its pixels,
its perceptual hash and a tiny grey thumbnail, and, for a file the training loader would replace
by a black image, the loader's own reason (deepfake.data.images.load_rgb decides, so "damaged" means the same here as in
training). Decoding releases the GIL, so threads overlap on several cores.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import pandas as pd
from PIL import Image

from deepfake.audit.features import COLOUR_COLUMNS, HEADER_COLUMNS, colour_facts, header_facts
from deepfake.data.images import load_rgb
from deepfake.data.manifest import file_sha256
from deepfake.data.scan import DEFAULT_SCAN_THREADS


def perceptual_hash(image: Image.Image) -> str:
    """The 64-bit pHash (DCT of the 32x32 greyscale thumbnail) as 16 hex digits.

    It survives re-encoding, small resizes and colour tweaks: the near-duplicate key. Kept as text
    because pandas would turn 64-bit integers beside missing values into floats.
    """
    return str(imagehash.phash(image, hash_size=8))


THUMBNAIL_SIDE = 16


def grey_thumbnail(image: Image.Image) -> bytes:
    """A 16x16 grey thumbnail (256 bytes): near-duplicate candidates are confirmed on it.

    Aligned faces share their low frequencies, so distinct faces can sit a few pHash bits apart;
    their thumbnails still differ, while a re-encoded or slightly resized copy's do not.
    """
    return image.convert("L").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX).tobytes()


def image_facts(path: str, known_sha256: str | None = None) -> dict:
    """Everything the checks need from one image; ``damaged`` holds the loader's reason or None."""
    file = Path(path)
    facts: dict = {"path": path, "damaged": None}
    try:
        facts["bytes"] = file.stat().st_size
        facts["sha256"] = known_sha256 or file_sha256(file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(file) as image:
                facts.update(header_facts(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        pass  # load_rgb below names the reason, in the words the training log uses
    rgb, reason = load_rgb(file)
    if reason is not None:
        facts["damaged"] = reason
        return facts
    facts.update(colour_facts(rgb))
    facts["phash"] = perceptual_hash(rgb)
    facts["thumbnail"] = grey_thumbnail(rgb)
    return facts


def gather_facts(
    paths: Sequence[str],
    *,
    known_sha256: Mapping[str, str] | None = None,
    threads: int = DEFAULT_SCAN_THREADS,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """One row per path, in order (a path listed twice is read once). ``progress(n)`` after each image."""
    known_sha256 = known_sha256 or {}
    unique = list(dict.fromkeys(paths))

    def one(path: str) -> dict:
        facts = image_facts(path, known_sha256.get(path))
        if progress is not None:
            progress(1)
        return facts

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        rows = list(pool.map(one, unique))
    # Every column, even when no image could be read (then they are all missing).
    columns = ["path", "damaged", "bytes", "sha256", *HEADER_COLUMNS, *COLOUR_COLUMNS, "phash", "thumbnail"]
    table = pd.DataFrame(rows).reindex(columns=columns).set_index("path", drop=False)
    return table.loc[list(paths)].reset_index(drop=True)
