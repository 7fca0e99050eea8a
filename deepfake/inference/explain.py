"""predict.cam: one CAM overlay per scored image (per face), so a user sees why it was called fake.

The maps come from the same Explainer and panels as task=cam; each map explains the verdict the
image got at the operating point, and is drawn over the region the model saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake.data.transforms import central_square
from deepfake.engine.evaluate import verdict
from deepfake.errors import DataError
from deepfake.explain import Explainer, upsample
from deepfake.explain.overlays import Sample, panel
from deepfake.inference.predictions import OVERLAYS_MARK, foreign_overlays, overlays_in


@dataclass
class OverlayItem:
    item: int  # index into the scored dataset
    name: str  # readable part of the file name; the overlay's number keeps names apart
    true_label: str | None


def safe_stem(text: str, limit: int = 60) -> str:
    """A file-name-safe, bounded version of ``text`` (image names may hold anything)."""
    return re.sub(r"[^\w.-]+", "_", text)[:limit] or "image"


def write_overlays(
    model: torch.nn.Module,
    dataset,
    items: list[OverlayItem],
    probs: np.ndarray,
    threshold: float,
    out_dir: Path,
    *,
    method: str,
    target_layer: str | None,
    batch_size: int,
    max_side: int | None = None,
) -> list[Path]:
    """``<row>_<name>.png`` per item in ``out_dir``, computed ``batch_size`` images at a time. An earlier
    predict's overlays there go first: they are of a predictions file just replaced. Files of that
    pattern in a folder no predict marked as its own are the user's: refused, never deleted. Each image
    is drawn at most ``max_side`` pixels square (None: as large as the region the model saw)."""
    if foreign := foreign_overlays(out_dir):
        raise DataError(f"{out_dir} holds {len(foreign)} file(s) named as overlays ({foreign[0].name}, ...) that no "
                        "predict wrote; they would be replaced")  # fmt: skip
    # Built first: it refuses an unknown method or layer, which must leave the earlier overlays in place.
    explainer = Explainer(model, method, target_layer, batch_size)
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in overlays_in(out_dir):
            path.unlink()
        (out_dir / OVERLAYS_MARK).write_text("overlays of task=predict; each run replaces them\n", encoding="utf-8")
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            images = torch.stack([dataset[entry.item]["image"] for entry in chunk])
            labels = [verdict(float(probs[entry.item]), threshold) for entry in chunk]
            for entry, cam, label in zip(chunk, explainer(images, labels), labels):
                region = _at_most(central_square(dataset.load(entry.item)[0]), max_side)
                sample = Sample(
                    image=region,
                    cam=upsample(cam[None], (region.height, region.width))[0],
                    true_label=entry.true_label,
                    prob_fake=float(probs[entry.item]),
                    explained=label,
                    name=entry.name,
                )
                path = out_dir / f"{len(written):05d}_{entry.name}.png"
                panel(sample).save(path)
                written.append(path)
    finally:
        explainer.close()
    return written


def _at_most(region: Image.Image, side: int | None) -> Image.Image:
    """A camera photo's region drawn at full size made a panel of 8000 x 4000 pixels (94 MB as PNG)."""
    if side is None or max(region.size) <= side:
        return region
    return region.resize((side, side), Image.Resampling.LANCZOS)  # the region is square
