"""CAMs of a detector trained for a few seconds on the synthetic set: right place, right direction,
about the model (sanity), and drawable for CNN, CvT and ViT backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.data.synthetic import generate_synthetic_dataset
from deepfake.data.transforms import build_eval_transform
from deepfake.explain import Explainer, default_target_layer, measure, upsample
from deepfake.explain.overlays import CAPTION_HEIGHT, MIN_PANEL_SIZE, Sample, panel
from deepfake.models import create_detector

IMG = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """test_resnet trained from scratch for 6 epochs on 256 images (~5 s on 2 cores); the
    validation split's partial fakes with their masks. Half the fakes are partial, so there are
    enough masks to measure on."""
    root = tmp_path_factory.mktemp("cam_data")
    generate_synthetic_dataset(
        root=root, n_train=256, n_valid=60, n_test=4, image_size=IMG, partial_fraction=0.5, jpeg_quality=95, seed=0
    )
    torch.manual_seed(0)
    model = create_detector("test_resnet")
    transform = build_eval_transform(IMG, mean=model.preprocess["mean"], std=model.preprocess["std"])
    images_root = root / "real_vs_fake" / "real-vs-fake"
    train = CsvImageDataset(root / "train.csv", images_root, transform)
    valid = CsvImageDataset(root / "valid.csv", images_root, transform)
    x = torch.stack([train[i]["image"] for i in range(len(train))])
    y = torch.tensor(train.targets, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(6):
        model.train()
        for batch in torch.randperm(len(x), generator=order).split(32):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[batch]).squeeze(1), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    masked = [i for i in range(len(valid)) if valid.mask_paths[i]]
    images = torch.stack([valid[i]["image"] for i in masked])
    masks = np.stack([np.asarray(Image.open(valid.mask_paths[i])) > 127 for i in masked])
    return model, images, masks


@pytest.fixture(scope="module")
def report(trained):
    model, images, masks = trained
    # layer2 (an 8x8 map at 64 px): the default layer4 is 2x2 on images this small.
    return measure(
        model, images, ["fake"] * len(images), masks, method="gradcam", target_layer="layer2", batch_size=16,
        road_percentiles=[20, 50, 80], sanity_fractions=[0.1, 0.5, 1.0], seed=0,
    )  # fmt: skip


def test_pointing_game_beats_the_random_map(report):
    local = report["localisation"]
    assert report["n_images"] >= 10
    assert local["gradcam"]["pointing_game"] >= 0.7
    assert local["random"]["pointing_game"] <= 0.5
    assert local["gradcam"]["pointing_game"] > local["random"]["pointing_game"]
    assert local["gradcam"]["energy_in_mask"] > local["random"]["energy_in_mask"] > 0
    assert local["gradcam"]["energy_in_mask"] > local["mask_area"]


def test_road_is_more_faithful_than_the_random_map(report):
    faith = report["faithfulness"]
    assert faith["gradcam"]["road_morf"] < faith["random"]["road_morf"]
    assert faith["gradcam"]["road_combined"] > faith["random"]["road_combined"]


def test_sanity_correlation_falls_under_cascading_randomisation(report):
    steps = report["sanity"]
    assert [s["fraction"] for s in steps] == [0.1, 0.5, 1.0]
    assert steps[0]["layers"] < steps[1]["layers"] < steps[2]["layers"]
    # From 1.0 (the trained model against itself) to near zero once the top layers are random.
    assert all(abs(s["spearman"]) < 0.5 for s in steps)


def test_real_and_fake_targets_explain_opposite_evidence(trained):
    model, images, _ = trained
    explainer = Explainer(model, "gradcam", "layer2")
    try:
        fake = explainer(images, ["fake"] * len(images))
        real = explainer(images, ["real"] * len(images))
        predicted = explainer.explain(images, "predicted", threshold=0.5)
    finally:
        explainer.close()
    assert fake.shape == real.shape == (len(images), IMG, IMG)
    assert np.abs(fake - real).mean() > 0.1
    # These are fakes the model gets right: "predicted" explains "fake" and gives the fake maps.
    assert predicted.labels == ["fake" if p >= 0.5 else "real" for p in predicted.probs]
    right = [i for i, label in enumerate(predicted.labels) if label == "fake"]
    assert len(right) >= len(images) // 2
    np.testing.assert_allclose(predicted.cams[right], fake[right], atol=1e-5)


def test_frozen_backbone_still_gets_gradients_and_keeps_none(trained):
    model, images, _ = trained
    for parameter in model.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None
    explainer = Explainer(model, "gradcam", "layer2")
    try:
        maps = explainer(images[:2], ["fake", "fake"])
        # The CAM's backward passes leave the model as they found it: frozen, and without gradients.
        assert not any(p.requires_grad for p in model.parameters())
        assert all(p.grad is None for p in model.parameters())
    finally:
        explainer.close()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    assert maps.max() > 0


@pytest.mark.parametrize(
    ("name", "size", "kwargs"),
    [("cvt_13", 48, {}), ("cvt_13", 64, {}), ("test_vit", 32, {"dynamic_img_size": True}), ("test_resnet", 64, {})],
)
def test_overlays_for_cnn_cvt_and_vit(tmp_path, name, size, kwargs):
    torch.manual_seed(0)
    model = create_detector(name, **kwargs).eval()
    images = torch.randn(2, 3, size, size)
    explainer = Explainer(model, "gradcam")
    try:
        explanation = explainer.explain(images, "fake")
    finally:
        explainer.close()
    assert explainer.target_layer == default_target_layer(model)
    assert explanation.cams.shape == (2, size, size)
    image = Image.fromarray(np.full((2 * size, 2 * size, 3), 128, np.uint8))  # a larger original
    cam = upsample(explanation.cams[:1], (image.height, image.width))[0]
    mask = np.zeros(cam.shape, bool)
    mask[10:30, 10:30] = True
    path = tmp_path / f"{name}_{size}.png"
    panel(Sample(image, cam, "fake", float(explanation.probs[0]), "fake", "x", mask)).save(path)
    side = max(MIN_PANEL_SIZE, image.height)
    assert Image.open(path).size == (2 * side, side + CAPTION_HEIGHT)


def test_the_explainers_p_fake_is_the_float64_one_every_task_uses():
    """Near a strict threshold (p close to 1) a float32 sigmoid called images fake that predictions.csv
    calls real; the explainer's probabilities are fake_probability's, bit for bit."""
    from deepfake.engine.evaluate import fake_probability

    torch.manual_seed(0)
    model = create_detector("test_resnet").eval()
    with torch.no_grad():
        model.get_classifier().bias.fill_(17.0)  # logits near 17: p within 1e-7 of 1
    images = torch.randn(6, 3, 32, 32)
    explainer = Explainer(model, "gradcam", "layer2")
    try:
        probs = explainer.probabilities(images, temperature=1.0)
    finally:
        explainer.close()
    with torch.no_grad():
        logits = model(images).reshape(-1).numpy()
    assert probs.dtype == np.float64 and np.array_equal(probs, fake_probability(logits))
    assert len(np.unique(probs)) == 6  # float32 would round all of them to one value


TINY_SWIN = {"img_size": 64, "window_size": 4, "embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


@pytest.mark.parametrize(
    ("name", "size", "kwargs"),
    [("swin_tiny_patch4_window7_224", 64, TINY_SWIN), ("eva02_tiny_patch14_224", 56, {"img_size": 56, "depth": 2})],
)
def test_swin_and_eva_layers_become_channel_first_maps(name, size, kwargs):
    """Swin's stages give (B, H, W, C): read as (B, C, h, w), H was taken for the channels. EVA keeps
    its blocks in a ModuleList, which the ViT-like check missed: its tokens crashed pytorch-grad-cam."""
    from deepfake.explain.layers import reshape_transform_for, resolve_target_layer

    torch.manual_seed(0)
    model = create_detector(name, **kwargs).eval()
    _, layer = resolve_target_layer(model, None)
    seen = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    handle.remove()
    maps = reshape_transform_for(model)(seen[0])
    assert maps.dim() == 4 and maps.shape[1] == seen[0].shape[-1]  # channels first, the tokens' or pixels' width
    assert maps.shape[2] == maps.shape[3] == {"swin_tiny_patch4_window7_224": 2, "eva02_tiny_patch14_224": 4}[name]

    explainer = Explainer(model, "gradcam")
    try:
        assert explainer.explain(torch.randn(2, 3, size, size), "fake").cams.shape == (2, size, size)
    finally:
        explainer.close()


@pytest.mark.parametrize(("size", "warned"), [(32, True), (64, False)])
def test_a_layer_of_1x1_maps_is_said_to_be_flat(caplog, size, warned):
    """test_resnet's last stage is 1×1 at 32 px: every map was flat and every CAM metric 0, silently."""
    torch.manual_seed(0)
    model = create_detector("test_resnet").eval()
    explainer = Explainer(model, "gradcam", batch_size=2)
    try:
        with caplog.at_level("WARNING", logger="deepfake.explain.cam"):
            explainer.explain(torch.randn(4, 3, size, size), "fake")
    finally:
        explainer.close()
    flat = [r.message for r in caplog.records if "gives 1×1 maps" in r.message]
    assert flat == (
        [
            f"cam.target_layer={explainer.target_layer} gives 1×1 maps at this image size: every CAM is "
            "flat and its metrics say nothing about where; use a larger dataset.img_size or an earlier "
            "layer"
        ]
        if warned
        else []
    )  # fmt: skip  (once, over two batches)


def test_the_metrics_do_not_repeat_the_flat_layer_warning(caplog):
    """task=cam said "gives 1×1 maps" once for its overlays and seven times more: once per map set of
    the metrics (the random baseline, each step of the sanity check)."""
    from deepfake.explain.suite import measure

    torch.manual_seed(0)
    model = create_detector("test_resnet").eval()
    with caplog.at_level("WARNING", logger="deepfake.explain.cam"):
        report = measure(
            model, torch.randn(4, 3, 32, 32), ["fake"] * 4, None, method="gradcam", target_layer=None, batch_size=4,
            road_percentiles=[50], sanity_fractions=[0.5, 1.0], seed=0,
        )  # fmt: skip
    assert len(report["sanity"]) == 2
    assert not [r.message for r in caplog.records if "gives 1×1 maps" in r.message]


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"method": "nosuch"}, "cam.method='nosuch'"),
        ({"target_layer": "nosuch.layer"}, "cam.target_layer='nosuch.layer'"),
    ],
)
def test_predicts_cam_settings_are_refused_before_the_earlier_overlays_go(tmp_path, setting, said):
    """predict.cam with an unknown method or layer deleted the earlier overlays, then failed building its
    explainer: the check must come first, and task=predict makes it before scoring (check_explainer)."""
    from deepfake.errors import ConfigError
    from deepfake.explain.cam import check_explainer
    from deepfake.inference.explain import write_overlays
    from deepfake.inference.predictions import OVERLAYS_MARK

    model = create_detector("test_resnet").eval()
    (tmp_path / OVERLAYS_MARK).write_text("overlays of task=predict")
    (tmp_path / "00000_earlier.png").write_bytes(b"an earlier overlay")
    chosen = {"method": "gradcam", "target_layer": None, "batch_size": 2, **setting}

    with pytest.raises(ConfigError, match=said):
        check_explainer(model, chosen["method"], chosen["target_layer"], img_size=32)
    with pytest.raises(ConfigError, match=said):
        write_overlays(model, None, [], np.zeros(0), 0.5, tmp_path, **chosen)
    assert (tmp_path / "00000_earlier.png").read_bytes() == b"an earlier overlay"
    assert not [name for name, module in model.named_modules() if module._forward_hooks]  # no hook left behind


@pytest.mark.parametrize("layer", ["fc", "global_pool"])
def test_a_target_layer_without_a_map_of_positions_is_refused_in_one_line(layer):
    """The head's fc or the pooling gives no map: pytorch-grad-cam's traceback ("Invalid grads shape"),
    and under train.do_cam only once training was over."""
    from deepfake.errors import ConfigError
    from deepfake.explain.cam import check_explainer

    model = create_detector("test_resnet").train()
    with pytest.raises(ConfigError, match=rf"cam.target_layer={layer} gives \d+(x\d+)? outputs per image, not a map"):
        check_explainer(model, "gradcam", layer, img_size=32)
    assert model.training  # the probe leaves the model as it found it
    check_explainer(model, "gradcam", "layer2", img_size=32)  # a stage's map passes
    explainer = Explainer(model, "gradcam", layer, batch_size=2)  # and when it is used without the probe
    with pytest.raises(ConfigError, match=f"cam.target_layer={layer} gives"):
        explainer(torch.zeros(2, 3, 32, 32), ["fake", "real"])
    explainer.close()


def test_a_mask_saved_at_another_resolution_than_its_image_is_outlined_at_the_images(tmp_path):
    """A 40 px fake with its 32 px mask: task=cam ended in an IndexError once its metrics were written."""
    from deepfake.explain.overlays import panel
    from deepfake.tasks.cam import _sample

    Image.new("RGB", (40, 40), (90, 90, 90)).save(tmp_path / "fake.png")
    square = np.zeros((32, 32), np.uint8)
    square[8:24, 8:24] = 255
    Image.fromarray(square).save(tmp_path / "mask.png")

    class OneFake:  # what _sample reads of a CsvImageDataset
        paths, targets, mask_paths = [str(tmp_path / "fake.png")], np.array([1]), [str(tmp_path / "mask.png")]

        def load(self, index):
            return Image.open(self.paths[index]).convert("RGB"), None

    sample = _sample(OneFake(), 0, np.ones((4, 4), np.float32), 0.9, "fake")
    assert sample.mask.shape == (40, 40) and sample.mask[10:30, 10:30].all() and not sample.mask[:10].any()
    assert panel(sample).width >= 2 * 40  # outlined on the image without an IndexError


@pytest.mark.parametrize(("max_side", "drawn"), [(256, 256), (None, 900)])
def test_predicts_overlay_of_a_large_photo_is_drawn_at_most_max_side_square(tmp_path, max_side, drawn):
    """A camera photo's overlay was drawn at the photo's size: 6000 x 4000 gave a 94 MB PNG."""
    from deepfake.data.image_files import ImageFileDataset
    from deepfake.inference.explain import OverlayItem, write_overlays

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(tmp_path / "small.jpg")
    dataset = ImageFileDataset(
        [str(tmp_path / "photo.jpg"), str(tmp_path / "small.jpg")],
        build_eval_transform(32, mean=[0.5] * 3, std=[0.25] * 3),
    )
    model = create_detector("test_resnet").eval()
    items = [OverlayItem(0, "photo", None), OverlayItem(1, "small", None)]

    written = write_overlays(model, dataset, items, np.array([0.9, 0.1]), 0.5, tmp_path / "cam",
                             method="gradcam", target_layer="layer2", batch_size=2, max_side=max_side)  # fmt: skip

    sizes = [Image.open(path).size for path in written]
    # Each panel: the square region and its overlay side by side, over a caption; a small one is not enlarged.
    assert sizes == [(2 * drawn, drawn + CAPTION_HEIGHT), (2 * MIN_PANEL_SIZE, MIN_PANEL_SIZE + CAPTION_HEIGHT)]
