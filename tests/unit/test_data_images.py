"""load_rgb: every PIL mode becomes RGB; every kind of damaged file becomes a black image + reason."""

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from deepfake.data.images import load_rgb, probe_image
from deepfake.data.transforms import build_eval_transform

MEAN = STD = (0.5, 0.5, 0.5)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _palette_with_transparency(size: tuple[int, int]) -> Image.Image:
    image = Image.new("P", size, 1)
    image.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)
    image.paste(0, (0, 0, size[0] // 2, size[1]))  # left half uses index 0: transparent white
    image.info["transparency"] = 0
    return image


# Each odd mode with a format that stores it as such.
ODD_IMAGES = {
    "L": (lambda size: Image.new("L", size, 128), "png"),
    "LA": (lambda size: Image.new("LA", size, (200, 255)), "png"),
    "P-transparent": (_palette_with_transparency, "png"),
    "RGBA": (lambda size: Image.new("RGBA", size, (10, 200, 30, 255)), "png"),
    "CMYK": (lambda size: Image.new("CMYK", size, (0, 255, 255, 0)), "tiff"),
    "I;16": (lambda size: Image.fromarray(np.full(size[::-1], 40000, np.uint16)), "png"),
    "1": (lambda size: Image.new("1", size, 1), "png"),
}


@pytest.mark.parametrize("kind", sorted(ODD_IMAGES))
@pytest.mark.parametrize("size", [(37, 23), (16, 48)])
def test_odd_modes_and_sizes_load_as_rgb_and_transform_to_square(tmp_path, kind, size):
    make, suffix = ODD_IMAGES[kind]
    path = _save(make(size), tmp_path / f"odd.{suffix}")

    image, reason = load_rgb(path)

    assert reason is None
    assert image.mode == "RGB" and image.size == size
    tensor = build_eval_transform(24, mean=MEAN, std=STD)(image)
    assert tensor.shape == (3, 24, 24)


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    path = _save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)

    image, reason = load_rgb(path)

    assert reason is None and image.mode == "RGB"
    red, green, blue = np.asarray(image)[10, 10]
    assert red > 200 and green < 60 and blue < 60


def test_alpha_is_composited_over_black(tmp_path):
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[:, :2] = (255, 255, 255, 0)  # fully transparent white
    pixels[:, 2:] = (200, 10, 10, 255)  # opaque red
    path = _save(Image.fromarray(pixels, "RGBA"), tmp_path / "alpha.png")

    rgb = np.asarray(load_rgb(path)[0])

    assert (rgb[:, :2] == 0).all()
    assert (rgb[:, 2:] == (200, 10, 10)).all()


def test_palette_transparency_becomes_black(tmp_path):
    path = _save(_palette_with_transparency((8, 4)), tmp_path / "palette.png")

    rgb = np.asarray(load_rgb(path)[0])

    assert (rgb[:, :4] == 0).all()
    assert (rgb[:, 4:] == (200, 30, 30)).all()


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    samples = np.array([[0, 32896, 65535]], np.uint16)
    path = _save(Image.fromarray(samples), tmp_path / "deep.png")

    rgb = np.asarray(load_rgb(path)[0])

    assert rgb[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    path = _save(Image.new("RGB", (40, 20), (90, 90, 90)), tmp_path / "rotated.jpg", exif=exif)

    image, reason = load_rgb(path)

    assert reason is None and image.size == (20, 40)


def test_a_damaged_exif_block_leaves_the_image_as_stored(tmp_path):
    """Pillow's EXIF parser raises struct.error on this block (two bytes of its directory flipped)
    after the pixels decoded fine: the image is kept, unturned, and not counted as damaged."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "cam"
    path = _save(Image.new("RGB", (40, 20), (90, 90, 90)), tmp_path / "bad_exif.jpg", exif=exif)
    data = bytearray(path.read_bytes())
    tiff = data.find(b"Exif\x00\x00") + 6
    data[tiff + 11], data[tiff + 20] = 61, 205
    path.write_bytes(bytes(data))
    with pytest.raises(struct.error):  # what load_rgb used to let through, ending the run
        ImageOps.exif_transpose(Image.open(path))

    image, reason = load_rgb(path)

    assert reason is None and image.size == (40, 20)
    assert probe_image(path) is None


def _truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _save(Image.fromarray(noise), path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _text_file(path: Path) -> Path:
    path.write_text("not an image\n")
    return path


DAMAGED = {
    "missing": (lambda path: path, "missing"),
    "zero bytes": (_empty_file, "empty"),
    "truncated jpeg": (_truncated_jpeg, "unreadable"),
    "text renamed .jpg": (_text_file, "not an image"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_files_become_black_with_a_reason(tmp_path, kind):
    make, expected_reason = DAMAGED[kind]
    path = make(tmp_path / "damaged.jpg")

    image, reason = load_rgb(path, fallback_size=12)

    assert reason is not None and expected_reason in reason
    assert image.mode == "RGB" and image.size == (12, 12)
    assert not np.asarray(image).any()


def test_intact_file_has_no_reason(tmp_path):
    path = _save(Image.new("RGB", (9, 7), (1, 2, 3)), tmp_path / "fine.png")

    image, reason = load_rgb(path)

    assert reason is None and np.asarray(image)[0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize(("mode", "key", "other"), [("RGB", (255, 255, 255), (200, 10, 10)), ("L", 200, 90)])
def test_a_png_colour_key_is_transparent_too(tmp_path, mode, key, other):
    """tRNS on an RGB or grey PNG: DECODE_RULES says transparent pixels are composited over black, and
    only palette images were."""
    image = Image.new(mode, (4, 4), key)
    image.paste(other, (2, 0, 4, 4))
    path = tmp_path / f"keyed_{mode}.png"
    image.save(path, transparency=key)

    rgb = np.asarray(load_rgb(path)[0])

    assert (rgb[:, :2] == 0).all()
    assert (rgb[:, 2:] == (np.array(other) if mode == "RGB" else np.array([other] * 3))).all()
