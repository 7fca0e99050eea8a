"""dataset.decode=cuda's pipeline, run with the CPU as the device: bytes from the workers, decode,
crop, flip and normalise on the device, and the fallbacks for files the batched decode refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.data.encoded import EncodedSamples, collate_encoded
from deepfake.data.transforms import NormaliseOnDevice, build_eval_transform, central_square
from deepfake.engine.device_images import DeviceImages

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 32


@pytest.fixture
def files(tmp_path):
    """A landscape JPEG, a portrait JPEG, a PNG, an empty file and a JPEG cut after its header."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    smooth = lambda h, w: Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))  # noqa: E731
    smooth(48, 64).save(root / "wide.jpg", quality=95)
    smooth(80, 40).save(root / "tall.jpg", quality=95)
    smooth(40, 40).save(root / "plain.png")
    (root / "empty.jpg").write_bytes(b"")
    whole = (root / "wide.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    names = ["wide.jpg", "tall.jpg", "plain.png", "empty.jpg", "cut.jpg"]
    (tmp_path / "split.csv").write_text("path,label\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))
    return CsvImageDataset(tmp_path / "split.csv", root, fallback_size=SIZE)


def _batch(dataset, **augment) -> dict:
    loader = DataLoader(EncodedSamples(dataset, **augment), batch_size=len(dataset), collate_fn=collate_encoded)
    return next(iter(loader))


def test_framed_like_evaluation_the_device_images_match_pillows_within_resampling(files):
    batch = _batch(files, crop_scale=(1.0, 1.0), hflip=0.0)
    assert batch["encoded"][0] is not None and batch["pixels"][0] is None  # a JPEG travels as bytes
    assert batch["encoded"][2] is None and batch["pixels"][2].shape == (3, 40, 40)  # a PNG as pixels
    images = DeviceImages(torch.device("cpu"), SIZE, mean=MEAN, std=STD)(batch)
    assert images.shape == (5, 3, SIZE, SIZE) and images.dtype == torch.float32

    files.transform = build_eval_transform(SIZE, mean=MEAN, std=STD)
    for index in range(3):
        pillow = files[index]["image"]
        # Same decoder family, different bicubic resamplers (Pillow's and torch's): close, not equal.
        difference = ((images[index] - pillow) * torch.tensor(STD).view(3, 1, 1)).abs()  # in [0, 1] pixel units
        assert difference.mean() < 2 / 255 and difference.max() < 40 / 255, index
    assert batch["damaged"].tolist() == [False, False, False, True, True]


@pytest.mark.parametrize(("width", "height"), [(67, 32), (32, 69), (40, 40), (41, 38)])
def test_the_box_framed_like_evaluation_is_the_square_evaluation_keeps(files, width, height):
    """CenterCrop rounds half the rest to even: 67 -> 32 starts at 18; the box's floor started at 17."""
    top, left, side, _ = EncodedSamples(files, crop_scale=(1.0, 1.0), hflip=0.0)._box(width, height)
    image = Image.effect_noise((width, height), 50).convert("RGB")
    assert image.crop((left, top, left + side, top + side)).tobytes() == central_square(image).tobytes()


def test_damaged_files_are_black_and_flagged_and_flips_mirror(files):
    batch = _batch(files, crop_scale=(1.0, 1.0), hflip=0.0)
    to_device = DeviceImages(torch.device("cpu"), SIZE, mean=MEAN, std=STD)
    images = to_device(batch)
    black = (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD)
    for index in (3, 4):
        assert torch.allclose(images[index], black.view(3, 1, 1).expand(3, SIZE, SIZE)), index
    assert batch["damaged"][3] and batch["damaged"][4]

    mirrored = _batch(files, crop_scale=(1.0, 1.0), hflip=1.0)
    assert mirrored["flip"].all()
    assert torch.equal(to_device(mirrored), images.flip(-1))


def test_a_stream_the_batched_decode_refuses_is_decoded_alone_or_by_pillow(files):
    batch = _batch(files, crop_scale=(1.0, 1.0), hflip=0.0)
    reference = DeviceImages(torch.device("cpu"), SIZE, mean=MEAN, std=STD)(batch)
    # A JPEG whose bytes came intact except the last few, which end the stream early: the batched
    # call fails on it, and every sample is then decoded on its own.
    broken = dict(batch, encoded=list(batch["encoded"]), damaged=batch["damaged"].clone())
    data = broken["encoded"][1]
    broken["encoded"][1] = data[: len(data) - 200]
    images = DeviceImages(torch.device("cpu"), SIZE, mean=MEAN, std=STD)(broken)
    assert torch.equal(images[0], reference[0])  # the others are untouched by the failure
    assert images.shape == reference.shape


def test_a_jpeg_stored_sideways_is_turned_by_pillow_as_evaluation_turns_it(tmp_path):
    """nvjpeg ignores EXIF orientation: such a file travels as Pillow's upright pixels instead of
    bytes, so training and evaluation see it the same way up."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 20), (200, 30, 30)).save(tmp_path / "sideways.jpg", exif=exif)
    Image.new("RGB", (40, 20), (200, 30, 30)).save(tmp_path / "upright.jpg")
    (tmp_path / "split.csv").write_text("path,label\nsideways.jpg,0\nupright.jpg,1\n")
    dataset = CsvImageDataset(tmp_path / "split.csv", tmp_path, fallback_size=SIZE)

    sideways, upright = EncodedSamples(dataset)[0], EncodedSamples(dataset)[1]

    assert sideways["encoded"] is None and sideways["pixels"].shape == (3, 40, 20)
    assert upright["encoded"] is not None and upright["pixels"] is None


def test_random_crops_are_drawn_per_sample_from_torchs_rng(files):
    samples = EncodedSamples(files, crop_scale=(0.3, 0.6), hflip=0.5)
    torch.manual_seed(7)
    first = samples[0]
    torch.manual_seed(7)
    again = samples[0]
    assert torch.equal(first["box"], again["box"]) and first["flip"] == again["flip"]
    top, left, height, width = first["box"].tolist()
    assert 0.3 * 48 * 64 * 0.9 <= height * width <= 0.6 * 48 * 64 * 1.1  # the scale range of the area
    assert top + height <= 48 and left + width <= 64


def test_augmentations_the_device_cannot_run_are_refused_before_training(tmp_path, files):
    from test_config import compose_with

    from deepfake.errors import ConfigError
    from deepfake.tasks.data_setup import train_input

    preprocess = {"img_size": SIZE, "mean": MEAN, "std": STD, "interpolation": "bicubic"}
    cfg = compose_with(tmp_path, "dataset.decode=cuda", "augment=strong")
    with pytest.raises(ConfigError, match="also sets color_jitter, jpeg_quality, blur_sigma; use augment=flip"):
        train_input(cfg, files, preprocess, torch.device("cpu"))
    served, loader_kwargs, to_device = train_input(compose_with(tmp_path, "dataset.decode=cuda"), files, preprocess,
                                                   torch.device("cpu"))  # fmt: skip
    assert isinstance(served, EncodedSamples) and loader_kwargs == {"collate_fn": collate_encoded}
    assert served.crop_scale == (1.0, 1.0) and served.hflip == 0.5  # augment=flip's own settings
    served, loader_kwargs, to_device = train_input(compose_with(tmp_path), files, preprocess, torch.device("cpu"))
    assert (served, loader_kwargs) == (files, {}) and isinstance(to_device, NormaliseOnDevice)  # decode=cpu
    with pytest.raises(ConfigError, match="dataset.decode='gpu'"):
        train_input(compose_with(tmp_path, "dataset.decode=gpu"), files, preprocess, torch.device("cpu"))
