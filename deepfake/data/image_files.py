"""A dataset of image files: decoded one at a time as batches are drawn, damaged ones served black.

The split CSVs (training, validation, test) and the files a user hands to task=predict go through
this one class, so an image is decoded, converted and transformed the same way wherever it is scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from deepfake.data.images import load_rgb


class ImageFileDataset(Dataset):
    """``paths`` with optional ``targets`` (1 = fake; NaN when unknown).

    An item is ``{"image", "target", "index", "damaged"}``. Holds only lists and a transform, so it
    pickles into spawned DataLoader workers.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        targets: Sequence[float] | np.ndarray | None = None,
        *,
        fallback_size: int = 256,
    ) -> None:
        self.paths: list[str] = [os.fspath(path) for path in paths]
        if targets is None:
            targets = np.full(len(self.paths), np.nan, dtype=np.float32)
        if len(targets) != len(self.paths):
            raise ValueError(f"{len(targets)} targets for {len(self.paths)} paths")
        self.targets = np.asarray(targets)
        self.transform = transform
        self.fallback_size = fallback_size

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Image.Image, str | None]:
        """The RGB image behind item ``index`` (a black one when damaged) and why it is damaged."""
        return load_rgb(self.paths[index], self.fallback_size)

    def __getitem__(self, index: int) -> dict:
        image, reason = self.load(index)
        if self.transform is not None:
            tensor = self.transform(image)
        else:
            tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        return {
            "image": tensor,
            "target": torch.tensor(self.targets[index], dtype=torch.float32),
            "index": index,
            "damaged": reason is not None,
        }

    def damage_reason(self, index: int) -> str | None:
        """Why item ``index`` is damaged, or None; decoded again because workers cannot report back."""
        return self.load(index)[1]
