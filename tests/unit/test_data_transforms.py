"""Train transforms are random and configurable; eval transforms are deterministic; both pickle."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake.data.transforms import RandomJpeg, build_eval_transform, build_train_transform
from deepfake.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVERY_OPTION = dict(color_jitter=0.3, jpeg_quality=(60, 90), jpeg_p=1.0, blur_sigma=(0.1, 1.0), blur_p=1.0)


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(40, 40), (57, 31), (20, 90)])
@pytest.mark.parametrize("options", [{}, EVERY_OPTION], ids=["defaults", "every option"])
def test_train_transform_gives_normalised_square_tensor(size, options):
    transform = build_train_transform(32, mean=MEAN, std=STD, **options)

    tensor = transform(_noise_image(*size))

    assert type(tensor) is torch.Tensor
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32


@pytest.mark.parametrize("size", [(40, 40), (57, 31), (20, 90)])
def test_eval_transform_gives_square_tensor(size):
    tensor = build_eval_transform(32, mean=MEAN, std=STD)(_noise_image(*size))

    assert type(tensor) is torch.Tensor
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32


def test_eval_transform_is_deterministic_whatever_the_seed():
    image = _noise_image(48, 40)

    torch.manual_seed(0)
    first = build_eval_transform(32, mean=MEAN, std=STD)(image)
    torch.manual_seed(1)
    second = build_eval_transform(32, mean=MEAN, std=STD)(image)

    assert torch.equal(first, second)


def test_eval_transform_normalises_with_mean_and_std():
    grey = Image.new("RGB", (32, 32), (128, 128, 128))

    tensor = build_eval_transform(32, mean=MEAN, std=STD)(grey)

    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(tensor[:, 5, 5], expected, atol=1e-5)


def test_eval_transform_centre_crops_the_longer_side():
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, 16:48] = 255  # the central square is white, the flanks black
    tensor = build_eval_transform(32, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")(Image.fromarray(pixels))

    assert torch.equal(tensor, torch.ones(3, 32, 32))


def test_train_transform_is_random_but_reproducible_under_a_seed():
    transform = build_train_transform(32, mean=MEAN, std=STD, **EVERY_OPTION)
    image = _noise_image(48, 48)

    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append(transform(image))

    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def _step_names(transform) -> list[str]:
    return [type(step).__name__ for step in transform.transforms]


def test_options_switch_steps_on_and_off():
    plain = _step_names(build_train_transform(32, mean=MEAN, std=STD, hflip=0.0))
    full = _step_names(build_train_transform(32, mean=MEAN, std=STD, **EVERY_OPTION))

    assert "RandomHorizontalFlip" not in plain and "ColorJitter" not in plain and "RandomApply" not in plain
    assert "RandomHorizontalFlip" in full and "ColorJitter" in full and full.count("RandomApply") == 2


@pytest.mark.parametrize("build", [build_train_transform, build_eval_transform])
def test_transforms_pickle(build):
    transform = build(32, mean=MEAN, std=STD)
    image = _noise_image(40, 36)

    clone = pickle.loads(pickle.dumps(transform))

    torch.manual_seed(5)
    expected = transform(image)
    torch.manual_seed(5)
    assert torch.equal(clone(image), expected)


def test_unknown_interpolation_is_a_config_error():
    with pytest.raises(ConfigError, match="interpolation='lanczos9'"):
        build_eval_transform(32, mean=MEAN, std=STD, interpolation="lanczos9")


def test_random_jpeg_recompresses_within_the_quality_range():
    image = _noise_image(32, 32)

    torch.manual_seed(0)
    recompressed = RandomJpeg((10, 20))(image)

    assert recompressed.mode == "RGB" and recompressed.size == image.size
    assert np.abs(np.asarray(recompressed, float) - np.asarray(image, float)).mean() > 10


@pytest.mark.parametrize("quality", [(0, 50), (90, 80), (50, 101)])
def test_random_jpeg_refuses_bad_quality(quality):
    with pytest.raises(ConfigError, match="jpeg_quality"):
        RandomJpeg(quality)


def test_train_transform_without_cropping_frames_odd_sizes_like_evaluation():
    wide = Image.new("RGB", (96, 48))
    wide.paste((255, 0, 0), (0, 0, 24, 48))  # a red band on the left, cut away by a centre crop
    kwargs = dict(mean=[0.0] * 3, std=[1.0] * 3, interpolation="bilinear")
    train = build_train_transform(32, hflip=0.0, crop_scale=(1.0, 1.0), **kwargs)(wide)
    evaluated = build_eval_transform(32, **kwargs)(wide)
    assert train.shape == evaluated.shape == (3, 32, 32)
    assert torch.equal(train, evaluated)
    assert train[0].max() < 0.5  # the band is not squashed into view


def test_the_cnndetection_preset_blurs_and_recompresses_each_half_of_the_time(tmp_path):
    """augment=cnndetection (Wang et al. 2020): blur sigma in (0, 3] and JPEG quality 30-100, each p=0.5."""
    from hydra.utils import instantiate
    from test_config import compose_with
    from torchvision.transforms import v2

    cfg = compose_with(tmp_path, "augment=cnndetection", "augment.hflip=0", "dataset.img_size=32")
    transform = instantiate(cfg.augment)(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    applied = [step for step in transform.transforms if isinstance(step, v2.RandomApply)]
    (blur,), (jpeg,) = applied[0].transforms, applied[1].transforms
    assert isinstance(blur, v2.GaussianBlur) and list(blur.sigma) == [0.001, 3.0] and applied[0].p == 0.5
    assert isinstance(jpeg, RandomJpeg) and jpeg.quality == (30, 100) and applied[1].p == 0.5

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    untouched = build_eval_transform(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image)
    changed = 0
    for seed in range(200):
        torch.manual_seed(seed)
        changed += not torch.equal(transform(image), untouched)
    assert 0.65 < changed / 200 < 0.85  # neither blur nor JPEG a quarter of the time: 1 - 0.5 * 0.5 = 0.75


def test_the_normalised_tensor_step_equals_torchvision_s_four_classes():
    from torchvision.transforms import v2

    from deepfake.data.transforms import NormalisedTensor

    image = _noise_image(40, 36)
    chain = v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD), v2.ToPureTensor()]
    )
    ours = NormalisedTensor(MEAN, STD)(image)
    assert type(ours) is torch.Tensor and ours.dtype == torch.float32 and ours.shape == (3, 36, 40)
    assert torch.equal(ours, chain(image))


@pytest.mark.parametrize("options", [{}, EVERY_OPTION], ids=["defaults", "every option"])
def test_uint8_training_images_normalised_as_a_batch_on_the_device_equal_normalising_each_image(options):
    """Training's loaders send uint8 images and the device normalises the batch: the same values,
    bit for bit, as normalising each image in the worker."""
    from deepfake.data.transforms import NormaliseOnDevice

    images = [_noise_image(40 + 3 * i, 36, seed=i) for i in range(6)]
    as_uint8 = build_train_transform(32, crop_scale=(0.6, 1.0), **options)
    as_float = build_train_transform(32, mean=MEAN, std=STD, crop_scale=(0.6, 1.0), **options)
    torch.manual_seed(3)
    sent = torch.stack([as_uint8(image) for image in images])
    torch.manual_seed(3)
    expected = torch.stack([as_float(image) for image in images])

    assert sent.dtype == torch.uint8 and sent.shape == (6, 3, 32, 32)
    got = NormaliseOnDevice(torch.device("cpu"), MEAN, STD)({"image": sent})
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_a_train_transform_takes_both_mean_and_std_or_neither():
    with pytest.raises(ValueError, match="both mean and std"):
        build_train_transform(32, mean=MEAN)


def _documented_pixels(path, size: int) -> np.ndarray:
    """model.json's "decode" and "resize" rules, followed word by word with Pillow and numpy alone,
    as a consumer of an exported model would (no code of this project)."""
    from PIL import ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
    if image.mode in ("I;16", "I"):
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) / 257, 0, 255).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
    image = image.convert("RGB")
    width, height = image.size
    shorter, longer = min(width, height), max(width, height)
    longer_after = int(size * longer / shorter)  # floor
    target = (size, longer_after) if width <= height else (longer_after, size)
    if target != image.size:
        image = image.resize(target, Image.BICUBIC)
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)  # halves to even
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _awkward_images(folder) -> list:
    """Sizes whose long side or crop offset rounds, and the modes whose decoding model.json spells out."""
    rng = np.random.default_rng(3)
    paths = []
    for width, height in [(35, 32), (32, 35), (77, 100), (100, 77), (101, 67), (67, 99), (33, 64)]:
        paths.append(folder / f"rgb_{width}x{height}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    rotated = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    paths.append(folder / "exif6.jpg")
    rotated.save(paths[-1], exif=exif, quality=95)
    paths.append(folder / "gray16.png")
    Image.fromarray(rng.integers(0, 65536, (48, 40), dtype=np.uint16)).save(paths[-1])
    rgba = rng.integers(0, 256, (50, 45, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rgba[..., 3] > 128, 255, 0)
    paths.append(folder / "rgba.png")
    Image.fromarray(rgba, "RGBA").save(paths[-1])
    paths.append(folder / "la.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(paths[-1])
    palette = Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).quantize(16)
    paths.append(folder / "palette.png")
    palette.save(paths[-1], transparency=3)
    return paths


def test_the_preprocessing_model_json_describes_reproduces_scoring_bit_for_bit(tmp_path):
    """Each rule the words leave out changed p(fake) for some images (up to 0.33 on a 16-bit PNG)."""
    from deepfake.data.images import DECODE_RULES, load_rgb
    from deepfake.data.transforms import eval_framing, framing_rules

    assert "exif_transpose" in DECODE_RULES and "257" in DECODE_RULES and "over black" in DECODE_RULES
    assert "floor(32 x longer / shorter)" in framing_rules(32, "bicubic")
    assert "halves rounded to even" in framing_rules(32, "bicubic")
    framing = eval_framing(32, "bicubic")
    for path in _awkward_images(tmp_path):
        image, damaged = load_rgb(path)
        assert damaged is None
        ours = np.asarray(framing(image))
        assert np.array_equal(ours, _documented_pixels(path, 32)), path.name


def test_the_scaling_model_json_describes_gives_scorings_tensor_bit_for_bit(tmp_path):
    """Dividing by 255, as the words once said, differs from torchvision's scaling in the last bit."""
    from deepfake.data.images import load_rgb
    from deepfake.data.transforms import build_eval_transform, eval_framing, framing_rules

    assert "float32(1/255)" in framing_rules(32, "bicubic")
    unnormalised = build_eval_transform(32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for path in _awkward_images(tmp_path):
        image, _ = load_rgb(path)
        pixels = np.asarray(eval_framing(32, "bicubic")(image)).astype(np.float32) * np.float32(1 / 255)
        assert np.array_equal(unnormalised(image).numpy(), pixels.transpose(2, 0, 1)), path.name


def test_the_cam_overlay_region_is_the_square_the_model_sees():
    """central_square starts where CenterCrop does: an odd margin rounds half to even, not down."""
    from deepfake.data.transforms import central_square, eval_framing

    for width, height in [(35, 32), (32, 37), (37, 32), (32, 33)]:
        image = _noise_image(width, height, seed=width)  # the shorter side is already 32: no resampling
        assert np.array_equal(np.asarray(central_square(image)), np.asarray(eval_framing(32)(image))), (width, height)
