"""Training samples for decoding on the device (``dataset.decode=cuda``): the JPEG's bytes, not its pixels.

Pillow decodes a 256 px JPEG in about 1.5 ms on one core; torchvision's nvjpeg decodes a whole batch
on the GPU in less. Here the DataLoader workers only read each file's bytes and draw the sample's
random crop and flip (from the sample's own seed, as the PIL pipeline does); the device decodes,
crops, resizes, flips and normalises (:mod:`deepfake.engine.device_images`). A file that is not a
JPEG, or whose header cannot be read, is decoded by Pillow in the worker and travels as pixels;
with the decoded-image cache (``dataset.cache=all``) every sample travels as its cached pixels and
the device does only the crops and flips.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import ExifTags, Image
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate
from torchvision.transforms import RandomResizedCrop

from deepfake.data.image_files import ImageFileDataset
from deepfake.data.transforms import centre_crop_offset

_JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedSamples(Dataset):
    """Items of ``dataset`` as ``{"encoded" | "pixels", "box", "flip", "target", "index", "damaged"}``.

    ``encoded``: the file's bytes (uint8, 1-D) or None; ``pixels``: a uint8 CHW image (a non-JPEG file,
    a damaged one served black, or the cached image) or None; ``box``: ``(top, left, height, width)``
    of the crop in that image; ``flip``: mirror it.
    """

    def __init__(
        self, dataset: ImageFileDataset, *, crop_scale: Sequence[float] = (0.8, 1.0), hflip: float = 0.5
    ) -> None:
        self.dataset = dataset
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.hflip = float(hflip)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        encoded, pixels, size, damaged = None, None, None, False
        if self.dataset.cache is None:
            encoded, size = _read_jpeg(self.dataset.paths[index])
        if encoded is None:
            image, reason = self.dataset.load(index)
            pixels, size, damaged = torch.from_numpy(np.array(image)).permute(2, 0, 1), image.size, reason is not None
        return {
            "encoded": encoded, "pixels": pixels, "box": torch.tensor(self._box(*size)),
            "flip": bool(self.hflip > 0 and torch.rand(()) < self.hflip),
            "target": torch.tensor(self.dataset.targets[index], dtype=torch.float32), "index": index, "damaged": damaged,
        }  # fmt: skip

    def _box(self, width: int, height: int) -> tuple[int, int, int, int]:
        if self.crop_scale == (1.0, 1.0):  # evaluation's framing: the central square
            side = min(width, height)
            return centre_crop_offset(height, side), centre_crop_offset(width, side), side, side
        # torchvision's own sampling of a random resized crop, from torch's (per-sample seeded) RNG; it
        # reads only the image's shape, which an empty tensor gives without pixels.
        shape_only = torch.empty((0, height, width))
        return tuple(RandomResizedCrop.get_params(shape_only, list(self.crop_scale), [3 / 4, 4 / 3]))

    # What the trainer reports about damaged images.
    @property
    def paths(self):
        return self.dataset.paths

    def damage_reason(self, index: int) -> str | None:
        return self.dataset.damage_reason(index)


def _read_jpeg(path: str) -> tuple[torch.Tensor | None, tuple[int, int] | None]:
    """The bytes of a readable JPEG and its (width, height) from the header; (None, None) otherwise."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        if not data.startswith(_JPEG_MAGIC):
            return None, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as header:  # parses the header only, decodes nothing
                size = header.size
                if _turned(header):  # nvjpeg ignores EXIF orientation: Pillow turns it as evaluation does
                    return None, None
    except (OSError, ValueError, SyntaxError):
        return None, None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), size


def _turned(header: Image.Image) -> bool:
    """Whether the JPEG's EXIF orientation asks for a turn or a mirror (an unreadable one does not:
    :func:`deepfake.data.images.upright` shows such an image as stored)."""
    if "exif" not in header.info:  # most files: nothing to parse
        return False
    try:
        return header.getexif().get(ExifTags.Base.Orientation, 1) != 1
    except Exception:
        return False


def collate_encoded(samples: list[dict]) -> dict:
    """Encoded bytes and pixels differ in length and shape from sample to sample: kept as lists."""
    lists = {key: [sample[key] for sample in samples] for key in ("encoded", "pixels")}
    rest = default_collate([{k: v for k, v in sample.items() if k not in lists} for sample in samples])
    return {**lists, **rest}
