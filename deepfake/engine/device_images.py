"""A batch of :class:`~deepfake.data.encoded.EncodedSamples` made into model input on the device.

JPEG bytes are decoded in one batched call of ``torchvision.io.decode_jpeg`` on the device (nvjpeg on
CUDA; libjpeg-turbo when the device is the CPU), then each sample is cropped to its box, resized to
``img_size`` with antialiasing, mirrored when drawn so, and normalised. A file the batched decode
refuses is decoded alone, then by Pillow on the CPU; one that fails all three is served black and
flagged damaged, as the PIL pipeline does.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from deepfake.data.transforms import interpolation_mode, normalised


class DeviceImages:
    """``batch -> images`` (float, normalised, N x 3 x img_size x img_size on ``device``); marks the
    samples it could not decode in ``batch["damaged"]``."""

    def __init__(self, device: torch.device, img_size: int, *, mean: Sequence[float], std: Sequence[float],
                 interpolation: str = "bicubic") -> None:  # fmt: skip
        self.device, self.img_size = device, int(img_size)
        self.interpolation = interpolation_mode(interpolation)  # the same names as the Pillow pipeline's
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, batch: dict) -> torch.Tensor:
        images = self._decode(batch)
        boxes, flips = batch["box"].tolist(), batch["flip"].tolist()
        out = torch.empty((len(images), 3, self.img_size, self.img_size), dtype=torch.uint8, device=self.device)
        for i, (image, (top, left, height, width), flip) in enumerate(zip(images, boxes, flips)):
            # uint8 in and out, as PIL's pipeline: the resized pixels are rounded like the CPU path's.
            framed = F.resized_crop(image, top, left, height, width, [self.img_size, self.img_size],
                                    interpolation=self.interpolation, antialias=True)  # fmt: skip
            out[i] = F.horizontal_flip(framed) if flip else framed
        return normalised(out, self.mean, self.std)

    def _decode(self, batch: dict) -> list[torch.Tensor]:
        """Every sample's uint8 CHW image on the device: decoded JPEGs and pixels sent from the workers."""
        images: list[torch.Tensor | None] = [
            None if pixels is None else pixels.to(self.device, non_blocking=True) for pixels in batch["pixels"]
        ]
        todo = [i for i, encoded in enumerate(batch["encoded"]) if encoded is not None]
        if todo:
            encoded = [batch["encoded"][i] for i in todo]
            try:
                decoded = _decode_jpeg(encoded, self.device)
            except RuntimeError:  # one bad stream fails the whole batched call: decode one by one
                decoded = [self._decode_one(data, batch, i) for data, i in zip(encoded, todo)]
            for i, image in zip(todo, decoded):
                images[i] = image
        return images

    def _decode_one(self, data: torch.Tensor, batch: dict, i: int) -> torch.Tensor:
        """The device's decoder, else Pillow on the CPU (CMYK and other JPEGs nvjpeg refuses), else black."""
        try:
            return _decode_jpeg(data, self.device)
        except RuntimeError:
            pass
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
                    pixels = np.array(image.convert("RGB"))
            return torch.from_numpy(pixels).permute(2, 0, 1).to(self.device)
        except (OSError, ValueError, SyntaxError):
            batch["damaged"][i] = True  # the trainer logs it, with the reason Pillow gives for the file
            top, left, height, width = batch["box"][i].tolist()
            return torch.zeros((3, top + height, left + width), dtype=torch.uint8, device=self.device)


_DECODE_STREAMS: dict[int, torch.cuda.Stream] = {}  # per CUDA device index


def _decode_jpeg(data, device: torch.device):
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still are the
        # batched nvjpeg decode this path is built on, and the warning would repeat in every run.log.
        warnings.simplefilter("ignore", DeprecationWarning)
        if device.type != "cuda":
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return _on_decode_stream(lambda: decode_jpeg(data, mode=ImageReadMode.RGB, device=device), device)


def _on_decode_stream(decode, device: torch.device):
    """``decode()`` on a CUDA stream of its own. torchvision allocates the images on the current
    stream, then nvjpeg fills them on a private stream that does not wait for the current one: on
    the training stream, memory that queued kernels (the last step's crops, its backward) still read
    could be handed to the decoder and overwritten, and a batch would train on the next one's pixels.
    On its own stream the decode gets memory that only earlier decoded images held, each of them
    marked as used by the training stream, so the allocator hands it out again only once the
    training stream is past its last use."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _DECODE_STREAMS.get(index)
    if stream is None:
        stream = _DECODE_STREAMS[index] = torch.cuda.Stream(device=index)
    training = torch.cuda.current_stream(index)
    with torch.cuda.stream(stream):
        decoded = decode()
    training.wait_stream(stream)  # the training stream reads the images only once they are decoded
    for image in [decoded] if isinstance(decoded, torch.Tensor) else decoded:
        image.record_stream(training)
    return decoded
