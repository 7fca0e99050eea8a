"""The basics: counts and balance, damaged files in the loader's words, sizes and modes, repeated rows."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from audit_data import IMAGE_ROOT, Item, faces, read_splits, write_dataset

from deepfake.audit.basics import basics_check
from deepfake.audit.pipeline import image_table


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Train: 8 faces (3 fake), one greyscale PNG of another size, one truncated, one missing, one
    listed twice. Test: 4 faces, 2 fake."""
    pixels = faces(12, 32, 7)
    train = [Item(f"t{i}.jpg", i < 3, pixels[i]) for i in range(8)]
    grey = np.asarray(pixels[8][:24, :, 0])
    train.append(Item("grey.png", False, grey, {"format": "PNG"}))
    root = write_dataset(tmp_path_factory.mktemp("basics"), {
        "train": train, "test": [Item(f"s{i}.jpg", i % 2 == 1, pixels[8 + i]) for i in range(4)]})  # fmt: skip
    images = root / IMAGE_ROOT / "train" / "real"
    (images / "t3.jpg").write_bytes((images / "t3.jpg").read_bytes()[:200])
    (images / "t4.jpg").unlink()
    csv = pd.read_csv(root / "train.csv", index_col=0)
    pd.concat([csv, csv.iloc[[5]]], ignore_index=True).to_csv(root / "train.csv")
    splits = read_splits(root, ("train", "test"))
    return basics_check(image_table(splits, {}, threads=2, progress=None), ["train", "test"], balance_tolerance=0.1)


def test_counts_and_balance(audited):
    counts = {c["split"]: (c["images"], c["real"], c["fake"]) for c in audited["counts"]}

    assert counts == {"train": (10, 7, 3), "test": (4, 2, 2)}


def test_damaged_files_carry_the_loaders_reason(audited):
    reasons = {d["path"].rsplit("/", 1)[-1]: d["reason"] for d in audited["damaged"]}

    assert reasons["t4.jpg"] == "missing file"
    assert reasons["t3.jpg"].startswith("unreadable")
    assert len(reasons) == 2


def test_sizes_modes_and_repeated_rows(audited):
    train_real_sizes = next(r for r in audited["sizes"] if (r["split"], r["class"]) == ("train", "real"))
    train_real_modes = next(r for r in audited["modes"] if (r["split"], r["class"]) == ("train", "real"))

    assert train_real_sizes["top"] == {"32x32": 4, "32x24": 1}  # t5 listed twice, t3/t4 unreadable
    assert train_real_modes["top"] == {"RGB": 4, "L": 1}
    assert audited["repeated_rows"] == [
        {"split": "train", "row": 11, "path": audited["repeated_rows"][0]["path"], "repeats_row": 7}]  # fmt: skip
    assert audited["repeated_rows"][0]["path"].endswith("t5.jpg")


def test_verdict_names_every_problem(audited):
    verdict = audited["verdict"]

    assert verdict.level == "warn"
    assert "train 30% fake" in verdict.message
    assert "2 damaged file(s)" in verdict.message and "1 repeated CSV row(s)" in verdict.message


@pytest.mark.parametrize(("setting", "said"), [
    ({"threads": "abc"}, "audit.threads='abc' is not an integer"),  # int()'s traceback
    ({"spectrum_min_prominence_db": "abc"}, "audit.spectrum_min_prominence_db='abc' is not a number"),  # after the reads
    ({"near_duplicate_min_correlation": 5}, "audit.near_duplicate_min_correlation=5 must be in (0, 1]"),  # passed all
    ({"listed_pairs": -1}, "audit.listed_pairs=-1 must be >= 0"),
])  # fmt: skip
def test_audit_settings_of_the_wrong_type_or_range_are_named(setting, said):
    from deepfake.audit.pipeline import AuditSettings
    from deepfake.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(said)):
        AuditSettings(**setting)
