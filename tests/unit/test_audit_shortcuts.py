"""The shortcut baseline: JPEG quality read back from the tables, a storage bias caught, a clean set passed."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from audit_data import IMAGE_ROOT, faces, read_splits, same_content_items, write_dataset
from PIL import Image

from deepfake.audit.features import feature_table, header_facts, jpeg_quality, name_features
from deepfake.audit.pipeline import AuditSettings, image_table, leakage_check, run_audit
from deepfake.audit.shortcuts import ALL_FEATURES, shortcut_check

SIZE = 32


def _audit(root):
    splits = read_splits(root, ("train", "test"))
    images = image_table(splits, {}, threads=4, progress=None)
    settings = AuditSettings()
    shortcuts = shortcut_check(
        feature_table(images),
        images["target"].to_numpy(),
        images["split"].to_numpy(),
        seed=0,
        warn_auc=settings.shortcut_warn_auc,
        fail_auc=settings.shortcut_fail_auc,
    )
    return images, shortcuts, leakage_check(images, ["train", "test"], settings)  # fmt: skip


def _dataset(tmp_path_factory, name: str, real_quality: int, fake_quality: int):
    return _dataset_at(tmp_path_factory.mktemp(name), real_quality, fake_quality)


def _dataset_at(root, real_quality: int, fake_quality: int):
    """80 train and 80 test faces from one distribution; reals and fakes differ only in JPEG quality."""
    items = {split: same_content_items(80, SIZE, seed, real_quality, fake_quality)
             for split, seed in (("train", 11), ("test", 12))}  # fmt: skip
    return write_dataset(root, items)


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    return _audit(_dataset(tmp_path_factory, "biased", 95, 75))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _audit(_dataset(tmp_path_factory, "clean", 95, 95))


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95, 100])
def test_jpeg_quality_is_read_back_from_the_quantisation_tables(quality):
    buffer = io.BytesIO()
    Image.fromarray(faces(1, SIZE, 0)[0]).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as image:
        assert jpeg_quality(image.quantization) == quality
        assert header_facts(image)["jpeg_quality"] == quality


def test_non_jpeg_files_have_no_quality():
    buffer = io.BytesIO()
    Image.fromarray(faces(1, SIZE, 0)[0]).save(buffer, format="PNG")
    with Image.open(buffer) as image:
        facts = header_facts(image)
    assert np.isnan(facts["jpeg_quality"]) and facts["chroma_subsampling"] == -1


def test_file_name_patterns():
    names = name_features(pd.Series(["/x/real/00001.jpg", "/x/fake/0A1B2C3D4E.jpg", "/x/y/my-photo_2.PNG"]))

    assert names["name_digits_only"].tolist() == [1, 0, 0]
    assert names["name_length"].tolist() == [5, 10, 10]
    assert names["name_upper"].tolist() == [0, 5, 0]
    assert names["name_other"].tolist() == [0, 0, 2]
    assert names["extension"].iloc[0] == names["extension"].iloc[1] != names["extension"].iloc[2]


def test_reals_at_q95_and_fakes_at_q75_are_caught(biased):
    images, shortcuts, _ = biased

    assert sorted(images.groupby("target")["jpeg_quality"].unique().map(list).sum()) == [75.0, 95.0]
    assert shortcuts["groups"][ALL_FEATURES]["auc"] >= 0.95
    assert shortcuts["groups"]["JPEG settings"]["auc"] >= 0.95
    assert shortcuts["verdict"].level == "fail"
    assert "without looking at faces" in shortcuts["verdict"].message


def test_a_clean_set_passes(clean):
    _, shortcuts, leakage = clean

    assert shortcuts["groups"][ALL_FEATURES]["auc"] < 0.7
    assert shortcuts["verdict"].level == "pass"
    assert leakage["pairs"] == [] and leakage["verdict"].level == "pass"


def test_per_class_distributions_are_the_images_own_statistics(biased):
    images, shortcuts, _ = biased
    fake_bytes = images.loc[images["target"] == 1, "bytes"]

    summary = shortcuts["distributions"]["bytes"]["fake"]
    assert summary["mean"] == pytest.approx(fake_bytes.mean())
    assert summary["median"] == pytest.approx(fake_bytes.median())


def test_a_perfect_shortcut_is_caught_when_one_class_has_few_training_images():
    """10 reals against 32 fakes: sklearn's default leaf of 20 images could never hold the reals
    alone, and a JPEG quality that splits the classes perfectly scored AUC 0.5."""
    from deepfake.audit.shortcuts import baseline_auc

    def split(reals: int, fakes: int) -> tuple[pd.DataFrame, np.ndarray]:
        target = np.array([0] * reals + [1] * fakes)
        return pd.DataFrame({"jpeg_quality": np.where(target == 1, 60.0, 95.0)}), target

    assert baseline_auc(*split(10, 32), *split(10, 20), seed=0) == 1.0


def test_one_split_is_judged_on_a_held_out_part_of_it_not_on_the_images_fitted(clean):
    """An audit of a train CSV alone used it as its own test split: the baseline's training AUC."""
    images, _, _ = clean
    train = images[images["split"] == "train"]
    settings = AuditSettings()
    alone = shortcut_check(feature_table(train), train["target"].to_numpy(), train["split"].to_numpy(), seed=0,
                           warn_auc=settings.shortcut_warn_auc, fail_auc=settings.shortcut_fail_auc,
                           train_split="train", test_split="train")  # fmt: skip
    assert (alone["n_train"], alone["n_test"]) == (56, 24)
    assert alone["groups"][ALL_FEATURES]["auc"] < 0.7 and alone["verdict"].level == "pass"
    assert "train: 70% -> 30% held out" in alone["verdict"].message


def test_a_train_split_of_one_class_is_not_measured(clean):
    """A model fitted on one class scores a constant: its AUC of 0.5 passed as "no shortcut found"."""
    images, _, _ = clean
    kept = images[(images["split"] == "test") | (images["target"] == 1)].reset_index(drop=True)
    settings = AuditSettings()

    shortcuts = shortcut_check(feature_table(kept), kept["target"].to_numpy(), kept["split"].to_numpy(), seed=0,
                               warn_auc=settings.shortcut_warn_auc, fail_auc=settings.shortcut_fail_auc)  # fmt: skip

    assert shortcuts["verdict"].level == "warn"
    assert shortcuts["verdict"].message.startswith("not measured: the train split needs both classes (train -> test")
    assert {r["auc"] for r in shortcuts["groups"].values()} == {None}


def test_a_test_split_of_unreadable_files_is_not_measured(tmp_path):
    """Missing or damaged test files have only their names and sizes: the baseline scored those and
    said PASS "no shortcut found" about images it never saw."""
    root = _dataset_at(tmp_path / "data", 95, 95)
    for path in (root / IMAGE_ROOT / "test").rglob("*.jpg"):
        path.write_bytes(b"<html>403 Forbidden</html>")

    report = run_audit(read_splits(root, ("train", "test")), AuditSettings(), tmp_path / "out", title="unreadable")

    assert report["basics"]["verdict"].level == "warn"  # the damaged files are reported there
    assert report["shortcuts"]["verdict"].level == "warn"
    message = report["shortcuts"]["verdict"].message
    assert message.startswith("not measured: no real or fake image of the test split could be read (train -> test")
    assert report["shortcuts"]["groups"][ALL_FEATURES]["auc"] is None


def test_a_class_none_of_whose_images_can_be_read_is_named():
    from deepfake.audit.shortcuts import unmeasurable

    target, split = np.array([0, 1, 0, 1, 0, 1]), np.array(["train"] * 4 + ["test"] * 2)
    parts = {"test split": split == "test", "train split": split == "train"}

    def cause(*readable: int) -> str | None:
        return unmeasurable(target, np.array(readable, bool), parts)

    assert cause(1, 1, 1, 1, 1, 1) is None
    assert cause(1, 1, 1, 1, 1, 0) == "no fake image of the test split could be read"
    assert cause(0, 1, 0, 1, 1, 1) == "no real image of the train split could be read"
