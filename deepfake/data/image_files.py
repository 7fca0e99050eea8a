"""A dataset of image files: decoded one at a time as batches are drawn, damaged ones served black.

The split CSVs (training, validation, test) and the files a user hands to task=predict go through
this one class, so an image is decoded, converted and transformed the same way wherever it is scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from deepfake.data.images import load_rgb
from deepfake.data.path_table import PathTable
from deepfake.data.scan import find_damaged, find_damaged_remembered

if TYPE_CHECKING:
    from deepfake.data.decoded_cache import DecodedImages


class ImageFileDataset(Dataset):
    """``paths`` with optional ``targets`` (1 = fake; NaN when unknown).

    An item is ``{"image", "target", "index", "damaged"}``. Per-sample data lives in numpy arrays
    (:class:`PathTable` for the paths), so forked DataLoader workers share it instead of copying it
    page by page, and the dataset pickles into spawned workers. With ``cache`` (a
    :class:`~deepfake.data.decoded_cache.DecodedImages` of these paths) images come from the
    decoded-image cache instead of the files.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        targets: Sequence[float] | np.ndarray | None = None,
        *,
        fallback_size: int = 256,
    ) -> None:
        self.paths = paths if isinstance(paths, PathTable) else PathTable(paths)
        if targets is None:
            targets = np.full(len(self.paths), np.nan, dtype=np.float32)
        if len(targets) != len(self.paths):
            raise ValueError(f"{len(targets)} targets for {len(self.paths)} paths")
        self.targets = np.asarray(targets)
        self.transform = transform
        self.fallback_size = fallback_size
        self.cache: DecodedImages | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Image.Image, str | None]:
        """The RGB image behind item ``index`` (a black one when damaged) and why it is damaged."""
        if self.cache is not None:
            return self.cache.image(index), self.cache.reason(index)
        return load_rgb(self.paths[index], self.fallback_size)

    def find_damaged(self, memo_dir: str | os.PathLike | None = None) -> tuple[list[tuple[str, str]], bool]:
        """``((path, reason) of every damaged image, remembered)``: from the cache, which decoded them
        all, or a scan; with ``memo_dir``, an earlier scan of the same unchanged files is read back
        (``remembered``) and a new one is kept there."""
        if self.cache is not None:
            return [(self.paths[index], reason) for index, reason in sorted(self.cache.damaged.items())], True
        if memo_dir is None:
            return find_damaged(self.paths), False
        return find_damaged_remembered(self.paths, memo_dir)

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
        """Why item ``index`` is damaged, or None; decoded again (workers cannot report back) unless cached."""
        if self.cache is not None:
            return self.cache.reason(index)
        return load_rgb(self.paths[index], self.fallback_size)[1]
