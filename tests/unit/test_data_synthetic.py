"""The synthetic set: Kaggle layout, determinism, idempotence, masks, and traces that are learnable."""

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from deepfake.data.csv_dataset import read_split_csv
from deepfake.data.images import load_rgb
from deepfake.data.synthetic import IMAGE_SUBDIR, SPLITS, generate_synthetic_dataset
from deepfake.data.synthetic_faces import _FINGERPRINT, render_sample
from deepfake.errors import ConfigError, DataError

TINY = dict(n_train=12, n_valid=6, n_test=6, image_size=32, partial_fraction=0.5, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "set", **TINY)


def _files(root):
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_kaggle_layout_and_columns(dataset):
    for split in SPLITS:
        header = (dataset / f"{split}.csv").read_text().splitlines()[0]
        assert header == ",original_path,id,label,label_str,path,mask_path"
        for folder in ("real", "fake"):
            assert (dataset / IMAGE_SUBDIR / split / folder).is_dir()


@pytest.mark.parametrize("split", SPLITS)
def test_rows_are_balanced_consistent_and_load_through_the_real_code_path(dataset, split):
    raw = pd.read_csv(dataset / f"{split}.csv", index_col=0)
    frame = read_split_csv(dataset / f"{split}.csv", dataset / IMAGE_SUBDIR)

    assert raw.index.tolist() == list(range(len(raw)))
    assert len(frame) == TINY[f"n_{split}"] and frame["target"].sum() == len(frame) // 2
    assert (raw["label_str"] == raw["label"].map({1: "real", 0: "fake"})).all()
    assert all(path.startswith(f"{split}/{label}/") for path, label in zip(raw["path"], raw["label_str"]))
    for path in frame["path"]:
        image, reason = load_rgb(path)
        assert reason is None and image.size == (32, 32)


def test_ids_are_unique_across_splits(dataset):
    ids = pd.concat([pd.read_csv(dataset / f"{split}.csv", dtype={"id": str})["id"] for split in SPLITS])

    assert ids.is_unique


def test_partial_fakes_have_binary_nonempty_masks_out_of_the_image_folders(dataset):
    frame = pd.concat([read_split_csv(dataset / f"{s}.csv", dataset / IMAGE_SUBDIR) for s in SPLITS])
    with_mask = frame[frame["mask_path"] != ""]

    assert len(with_mask) > 0 and (with_mask["target"] == 1).all()
    for image_path, mask_path in zip(with_mask["path"], with_mask["mask_path"]):
        split = Path(image_path).parent.parent.name
        assert mask_path == str(dataset / IMAGE_SUBDIR / "masks" / split / Path(image_path).with_suffix(".png").name)
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == (32, 32)
        assert set(np.unique(mask)) == {0, 255}
    # task=predict on a split's folder finds its images and nothing else (the masks sat beside the fakes).
    for split in SPLITS:
        assert {p.suffix for p in (dataset / IMAGE_SUBDIR / split).rglob("*") if p.is_file()} == {".jpg"}


def test_same_seed_gives_identical_bytes(dataset, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", **TINY)

    assert _files(again) == _files(dataset)


def test_another_seed_gives_other_images(dataset, tmp_path):
    """The pixels, position by position, not only the CSV (whose ids are drawn apart from the pixels)."""
    other = generate_synthetic_dataset(tmp_path / "other", **{**TINY, "seed": 4})

    def pixels(root):
        paths = pd.read_csv(root / "train.csv")["path"]
        return [np.asarray(Image.open(root / IMAGE_SUBDIR / path)) for path in paths]

    assert all(not np.array_equal(a, b) for a, b in zip(pixels(dataset), pixels(other), strict=True))


def test_second_call_with_same_parameters_writes_nothing(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "set", **TINY)
    before = {path: path.stat().st_mtime_ns for path in root.rglob("*")}

    assert generate_synthetic_dataset(tmp_path / "set", **TINY) == root

    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == before


def test_a_chosen_root_with_other_settings_is_refused_then_replaced_with_overwrite(tmp_path):
    generate_synthetic_dataset(tmp_path / "set", **TINY)
    before = _files(tmp_path / "set")

    with pytest.raises(DataError) as refused:
        generate_synthetic_dataset(tmp_path / "set", **{**TINY, "n_train": 8, "seed": 5})
    assert "(recorded -> requested: n_train 12 -> 8, seed 3 -> 5)" in str(refused.value)
    assert "overwrite=true" in str(refused.value) and "\n" not in str(refused.value)
    assert _files(tmp_path / "set") == before

    root = generate_synthetic_dataset(tmp_path / "set", **{**TINY, "n_train": 8, "seed": 5}, overwrite=True)

    assert len(pd.read_csv(root / "train.csv")) == 8
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")) == ["set"]


def test_the_projects_own_cache_is_regenerated_in_place(tmp_path):
    generate_synthetic_dataset(tmp_path / "set", **TINY, cache_root=tmp_path / "set")

    root = generate_synthetic_dataset(tmp_path / "set", **{**TINY, "n_train": 8}, cache_root=tmp_path / "." / "set")

    assert len(pd.read_csv(root / "train.csv")) == 8
    # A folder under the cache (the default: one per image size) is the project's too.
    generate_synthetic_dataset(tmp_path / "cache" / "32px", **TINY, cache_root=tmp_path / "cache")
    inside = generate_synthetic_dataset(
        tmp_path / "cache" / "32px", **{**TINY, "n_train": 8}, cache_root=tmp_path / "cache"
    )
    assert len(pd.read_csv(inside / "train.csv")) == 8
    with pytest.raises(DataError, match="other settings"):  # a sibling of the cache is not in it
        generate_synthetic_dataset(tmp_path / "cache_other", **TINY, cache_root=tmp_path / "cache")
        generate_synthetic_dataset(tmp_path / "cache_other", **{**TINY, "n_train": 8}, cache_root=tmp_path / "cache")


@pytest.mark.parametrize(("overrides", "folder"), [
    ([], "64px"),  # the defaults keep the plain name
    (["dataset.img_size=32"], "32px"),
    (["dataset.img_size=32", "dataset.generate.n_train=64", "dataset.generate.n_valid=32",
      "dataset.generate.n_test=32"], "32px-n64-32-32"),
    (["dataset.generate.seed=3", "dataset.generate.jpeg_quality=80", "dataset.generate.partial_fraction=0.5",
      "dataset.generate.generator=blending"], "64px-seed3-q80-partial0.5-blending"),
    # every digit kept: seeds 20261203 and 20261204 shared "seed2.02612e+07", and one regenerated the other
    (["dataset.generate.seed=20261203", "dataset.generate.partial_fraction=0.1234567"],
     "64px-seed20261203-partial0.1234567"),
    (["dataset.generate.seed=20261204"], "64px-seed20261204"),
    (["experiment=smoke"], "32px-n64-32-32"),  # the smoke test's tiny set: a folder of its own too
])  # fmt: skip
def test_the_default_dataset_has_a_folder_per_image_size_and_settings(overrides, folder):
    """Runs at other img_size at once (a sweep) each read their own images, and so do a run and a
    task=test with other generate settings: in one folder, the second regenerated the images the
    first was training on (black images for most of its epochs, a finished run scored on them)."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        dataset = compose("config", overrides=["paths.root_dir=/r", *overrides]).dataset
    assert dataset.root == f"/r/data/synthetic/{folder}" and dataset.generate.root == dataset.root
    assert Path(dataset.root).parent == Path(dataset.generate.cache_root)  # regenerated freely: the project's


def test_concurrent_callers_get_one_complete_dataset(tmp_path):
    errors = []

    def generate():
        try:
            generate_synthetic_dataset(tmp_path / "set", **TINY)
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=generate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(read_split_csv(tmp_path / "set" / "train.csv", tmp_path / "set" / IMAGE_SUBDIR)) == 12


def test_refuses_to_replace_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")

    with pytest.raises(DataError, match="mine: exists and is not a synthetic dataset"):
        generate_synthetic_dataset(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "change", [{"n_test": 1}, {"image_size": 8}, {"partial_fraction": 1.5}, {"jpeg_quality": 0}], ids=str
)
def test_bad_parameters_are_config_errors(tmp_path, change):
    with pytest.raises(ConfigError, match=next(iter(change))):
        generate_synthetic_dataset(tmp_path / "set", **{**TINY, **change})


def test_partial_fake_traces_lie_inside_the_mask():
    """The generator's fingerprint correlates with the image inside the mask, not outside it."""
    fingerprint = np.tile(_FINGERPRINT, (1, 8, 8)).transpose(1, 2, 0)
    inside, outside = [], []
    for seed in range(6):
        pixels, mask = render_sample("partial", 64, np.random.default_rng(seed))
        residual = pixels.astype(float) - np.asarray(Image.fromarray(pixels).resize((8, 8)).resize((64, 64)), float)
        match = (residual * fingerprint).sum(axis=2)
        inside.append(match[mask].mean())
        outside.append(match[~mask].mean())

    assert min(inside) > max(outside)


def _probe_auc(features: dict, targets: dict) -> float:
    """Test AUC of a logistic regression fitted on the train split's features."""
    probe = LogisticRegression(C=0.1, max_iter=2000).fit(features["train"], targets["train"])
    return roc_auc_score(targets["test"], probe.predict_proba(features["test"])[:, 1])


def test_fakes_are_told_apart_by_their_spectrum_not_by_mean_colour(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "set", n_train=80, n_valid=2, n_test=60, image_size=64, seed=1)
    spectra, colours, targets = {}, {}, {}
    for split in ("train", "test"):
        frame = read_split_csv(root / f"{split}.csv", root / IMAGE_SUBDIR)
        images = np.stack([np.asarray(load_rgb(path)[0], float) for path in frame["path"]])
        spectra[split] = np.log1p(np.abs(np.fft.fft2(images.mean(axis=3)))).reshape(len(images), -1)
        colours[split] = images.mean(axis=(1, 2))
        targets[split] = frame["target"].to_numpy()

    assert _probe_auc(spectra, targets) > 0.95
    assert _probe_auc(colours, targets) < 0.75
