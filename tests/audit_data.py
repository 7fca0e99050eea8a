"""Tiny Kaggle-layout datasets for the audit tests, with control over how each image is stored."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from deepfake.audit.pipeline import Split
from deepfake.data.csv_dataset import read_split_csv
from deepfake.data.synthetic_faces import render_sample
from deepfake.tasks.audit import SPLIT_KEYS

IMAGE_ROOT = Path("real_vs_fake") / "real-vs-fake"
SPLITS = ("train", "valid", "test")


@dataclass
class Item:
    name: str
    fake: bool
    pixels: np.ndarray  # HxWx3 uint8
    save: dict = field(default_factory=lambda: {"format": "JPEG", "quality": 95})


def encode(pixels: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, **save)
    return buffer.getvalue()


def write_dataset(root: Path, items: dict[str, list[Item]]) -> Path:
    """Images under ``root/real_vs_fake/real-vs-fake/<split>/<real|fake>/`` and Kaggle CSVs in ``root``."""
    for split, split_items in items.items():
        rows = []
        for item in split_items:
            label = "fake" if item.fake else "real"
            relative = f"{split}/{label}/{item.name}"
            path = root / IMAGE_ROOT / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(item.pixels, **item.save))
            rows.append((f"/src/{item.name}", Path(item.name).stem, int(not item.fake), label, relative))
        frame = pd.DataFrame(rows, columns=["original_path", "id", "label", "label_str", "path"])
        frame.to_csv(root / f"{split}.csv")
    return root


def read_splits(root: Path, names=SPLITS) -> list[Split]:
    keys = dict(SPLIT_KEYS)
    return [Split(name, root / f"{name}.csv", read_split_csv(root / f"{name}.csv", root / IMAGE_ROOT), keys[name])
            for name in names]  # fmt: skip


def faces(count: int, size: int, seed: int, kind: str = "real") -> list[np.ndarray]:
    """Distinct procedural faces (the synthetic set's renderer), all from one distribution."""
    return [render_sample(kind, size, np.random.default_rng([seed, i]))[0] for i in range(count)]


def same_content_items(count: int, size: int, seed: int, real_quality: int, fake_quality: int) -> list[Item]:
    """Faces of one distribution, every second one labelled fake; only the JPEG quality may differ."""
    return [Item(f"img{seed:02d}{i:04d}.jpg", bool(i % 2), pixels,
                 {"format": "JPEG", "quality": fake_quality if i % 2 else real_quality})
            for i, pixels in enumerate(faces(count, size, seed))]  # fmt: skip


def leaky_items(size: int = 64, altered_name: str = "copy_c.jpg") -> dict[str, list[Item]]:
    """30 train, 10 valid and 20 test faces, plus 3 test images copied from train: two byte for byte,
    one decoded, resized by 2 pixels and re-encoded at JPEG quality 70 instead of 95."""

    def split(name: str, count: int, seed: int) -> list[Item]:
        return [Item(f"{name}{i:03d}.jpg", bool(i % 2), pixels) for i, pixels in enumerate(faces(count, size, seed))]

    train, valid, test = split("train", 30, 1), split("valid", 10, 2), split("test", 20, 3)
    stored = Image.open(io.BytesIO(encode(train[2].pixels, **train[2].save)))
    altered = np.asarray(stored.resize((size - 2, size - 2), Image.Resampling.BICUBIC))
    test += [
        Item("copy_a.jpg", train[0].fake, train[0].pixels),
        Item("copy_b.jpg", train[1].fake, train[1].pixels),
        Item(altered_name, train[2].fake, altered, {"format": "JPEG", "quality": 70}),
    ]
    return {"train": train, "valid": valid, "test": test}
