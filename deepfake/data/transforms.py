"""Train and eval preprocessing: PIL image in, normalised float tensor out, or uint8 out for loaders
whose batches are normalised on the device (:class:`NormaliseOnDevice`: training and scoring).

Built from torchvision v2 classes and plain classes (no lambdas) so a transform pickles into
spawned DataLoader workers. Pixel operations run on the PIL image, so train and eval resample
with the same (PIL) kernels and the fine traces a detector looks for are treated alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from deepfake.errors import ConfigError

_INTERPOLATIONS = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


def interpolation_mode(name: str) -> v2.InterpolationMode:
    try:
        return _INTERPOLATIONS[name]
    except KeyError:
        raise ConfigError(f"interpolation={name!r} is not supported; use one of {', '.join(_INTERPOLATIONS)}") from None


class RandomJpeg:
    """Re-encode a PIL image as JPEG at a quality drawn uniformly from ``quality`` (inclusive).

    PIL's encoder: torchvision's JPEG ops are deprecated from 0.29. The quality comes from
    torch's RNG, so seeding (and DataLoader worker seeding) governs it like every other step.
    """

    def __init__(self, quality: Sequence[int]) -> None:
        low, high = (int(q) for q in quality)
        if not 1 <= low <= high <= 100:
            raise ConfigError(f"jpeg_quality={list(quality)} must be (low, high) with 1 <= low <= high <= 100")
        self.quality = (low, high)

    def __call__(self, image: Image.Image) -> Image.Image:
        quality = int(torch.randint(self.quality[0], self.quality[1] + 1, ()))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.quality})"


class NormalisedTensor:
    """PIL image -> float tensor in [0, 1], normalised by ``mean`` and ``std``: v2's ToImage,
    ToDtype(scale=True), Normalize and ToPureTensor, through their functional forms in one step.

    The same values bit for bit; in a Compose, each of the four classes flattens and inspects its
    input first, which on a 64 px image took 356 µs against 169 µs for the work itself, per image
    in every loader.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return normalised(F.pil_to_tensor(image), self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class UInt8Tensor:
    """PIL image -> uint8 CHW tensor (v2's ToImage and ToPureTensor in one step), for batches that
    are normalised where the model runs (:class:`NormaliseOnDevice`)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return F.pil_to_tensor(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def normalised(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 image(s) (CHW, or an NCHW batch) -> float in [0, 1] normalised by ``mean`` and ``std``,
    on the images' device: the same operations for one image in a worker and for a batch on a GPU,
    so both give the same values bit for bit on the CPU."""
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), mean=list(mean), std=list(std))


class NormaliseOnDevice:
    """``batch -> model input``: a batch of uint8 images sent to ``device`` and normalised there.

    Workers, shared memory, pinned buffers and the host-to-device copy then carry a quarter of the
    bytes that float images take (at 256 px, 197 KB an image instead of 786 KB), and the GPU does the
    normalising instead of the loader workers, as timm's prefetcher does."""

    def __init__(self, device: torch.device, mean: Sequence[float], std: Sequence[float]) -> None:
        self.device, self.mean, self.std = device, [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, batch: dict) -> torch.Tensor:
        return normalised(batch["image"].to(self.device, non_blocking=True), self.mean, self.std)


def _to_normalised_tensor(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[Callable]:
    # A plain tensor, not a tv_tensor: downstream code (collate, CAM, metrics) expects plain tensors.
    if mean is None and std is None:
        return [UInt8Tensor()]
    if mean is None or std is None:
        raise ValueError("give both mean and std (a normalised tensor), or neither (uint8)")
    return [NormalisedTensor(mean, std)]


def build_train_transform(
    img_size: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bicubic",
    hflip: float = 0.5,
    crop_scale: tuple[float, float] = (0.8, 1.0),
    color_jitter: float = 0.0,
    jpeg_quality: tuple[int, int] | None = None,
    jpeg_p: float = 0.5,
    blur_sigma: tuple[float, float] | None = None,
    blur_p: float = 0.5,
) -> v2.Compose:
    """Random resized crop, then optional flip, colour jitter, blur and JPEG re-compression; a tensor
    normalised by ``mean`` and ``std``, or without them a uint8 one (normalised per batch on the device).

    Blur and JPEG come last among the pixel ops: they imitate what happens to an image after it
    is made (resharing, re-encoding), which is what a detector must be robust to.
    """
    if tuple(crop_scale) == (1.0, 1.0):
        # No cropping asked for: frame the image exactly as evaluation does. RandomResizedCrop would
        # fall back to squashing a non-square image to a square, which evaluation never sees.
        steps: list[Callable] = _resize_and_centre_crop(img_size, interpolation)
    else:
        steps = [
            v2.RandomResizedCrop(
                img_size, scale=tuple(crop_scale), interpolation=interpolation_mode(interpolation), antialias=True
            ),
        ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    if blur_sigma is not None:
        # Kernel wide enough for 3 sigma on each side, odd as GaussianBlur requires.
        kernel = 2 * math.ceil(3 * max(blur_sigma)) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=tuple(blur_sigma))], p=blur_p))
    if jpeg_quality is not None:
        steps.append(v2.RandomApply([RandomJpeg(jpeg_quality)], p=jpeg_p))
    return v2.Compose(steps + _to_normalised_tensor(mean, std))


def build_eval_transform(
    img_size: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bicubic",
) -> v2.Compose:
    """Deterministic: resize the shorter side to ``img_size``, centre crop, normalise (without ``mean``
    and ``std``: uint8, for batches normalised on the device)."""
    return v2.Compose(_resize_and_centre_crop(img_size, interpolation) + _to_normalised_tensor(mean, std))


def eval_framing(img_size: int, interpolation: str = "bicubic") -> v2.Compose:
    """The PIL-to-PIL half of the eval transform (resize the shorter side, centre crop): what the
    decoded-image cache stores. On an image it already framed it changes nothing (torchvision
    returns an image of the target size as it is), so cached images evaluate bit for bit alike."""
    return v2.Compose(_resize_and_centre_crop(img_size, interpolation))


def central_square(image: Image.Image) -> Image.Image:
    """The region the eval transform keeps of ``image`` (it resizes the shorter side, then centre-crops),
    at the image's own resolution: what an overlay of the model's view is drawn on."""
    side = min(image.size)
    left, top = centre_crop_offset(image.width, side), centre_crop_offset(image.height, side)
    return image.crop((left, top, left + side, top + side))


def centre_crop_offset(length: int, crop: int) -> int:
    """Where torchvision's CenterCrop starts a crop of ``crop`` along ``length``: half the rest,
    rounded half to even (Python's round), so 35 -> 32 starts at 2, not 1."""
    return int(round((length - crop) / 2.0))


def framing_rules(img_size: int, interpolation: str) -> str:
    """The eval framing (``_resize_and_centre_crop``) and pixel scaling in words, exactly enough for a
    consumer of an exported model to reproduce it bit for bit with Pillow and numpy."""
    return (
        f"resize with Pillow ({interpolation}, which antialiases) so the shorter side is {img_size} and the "
        f"longer floor({img_size} x longer / shorter) (torchvision's v2.Resize({img_size})); crop the central "
        f"{img_size} x {img_size} square, starting at round((side - {img_size}) / 2) with halves rounded to even "
        "(torchvision's v2.CenterCrop); scale the uint8 pixels to [0, 1] by multiplying them, as float32, by float32(1/255) "
        "(torchvision's to_dtype(scale=True); dividing by 255 differs in the last bit of about a third of the values)"
    )


def _resize_and_centre_crop(img_size: int, interpolation: str) -> list[Callable]:
    return [
        v2.Resize(img_size, interpolation=interpolation_mode(interpolation), antialias=True),
        v2.CenterCrop(img_size),
    ]
