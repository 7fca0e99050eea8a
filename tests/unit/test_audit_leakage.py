"""Leakage across splits: exact and near duplicates found with an index, de-leaked CSVs written."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from audit_data import IMAGE_ROOT, leaky_items, read_splits, write_dataset

from deepfake.audit.facts import gather_facts
from deepfake.audit.hamming import HammingIndex, popcount
from deepfake.audit.leakage import EXACT, NEAR
from deepfake.audit.pipeline import AuditSettings, image_table, leakage_check, write_clean_csvs

SIZE = 64


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("leaky"), leaky_items(SIZE))


def _audit_leakage(root, **settings):
    splits = read_splits(root)
    images = image_table(splits, {}, threads=4, progress=None)
    return splits, images, leakage_check(images, [s.name for s in splits], AuditSettings(**settings))


def test_all_three_copies_are_found_and_nothing_else(leaky):
    _, _, leakage = _audit_leakage(leaky)
    found = {(p["b_path"].rsplit("/", 1)[-1], p["a_path"].rsplit("/", 1)[-1], p["kind"]) for p in leakage["pairs"]}

    assert found == {
        ("copy_a.jpg", "train000.jpg", EXACT),
        ("copy_b.jpg", "train001.jpg", EXACT),
        ("copy_c.jpg", "train002.jpg", NEAR),
    }
    train_test = next(c for c in leakage["counts"] if (c["earlier"], c["later"]) == ("train", "test"))
    assert (train_test["exact"], train_test["near"]) == (2, 1)
    assert train_test["share_of_later"] == pytest.approx(3 / 23)
    assert leakage["verdict"].level == "fail"
    assert leakage["drop_rows"] == {"test": [22, 23, 24]}  # CSV lines of the three copies


def test_the_altered_copy_is_close_in_hash_and_thumbnail_as_the_config_says(leaky):
    """conf/audit/default.yaml: re-encoded or slightly resized copies are 0-4 bits apart, 0.98+ correlated."""
    _, _, leakage = _audit_leakage(leaky)
    near = next(p for p in leakage["pairs"] if p["kind"] == NEAR)

    assert near["distance"] <= 4 and near["correlation"] >= 0.98

    _, _, stricter = _audit_leakage(leaky, near_duplicate_min_correlation=min(1.0, near["correlation"] + 1e-3))
    assert {p["kind"] for p in stricter["pairs"]} == {EXACT}


def test_clean_csvs_drop_the_copies_and_pass_a_second_audit(leaky, tmp_path):
    splits, _, leakage = _audit_leakage(leaky)

    written = write_clean_csvs(splits, leakage["drop_rows"], tmp_path)

    assert {s: w["dropped"] for s, w in written.items()} == {"train": 0, "valid": 0, "test": 3}
    header = (tmp_path / "clean" / "test.csv").read_text().splitlines()[0]
    assert header == ",original_path,id,label,label_str,path"  # Kaggle's format, index column included
    clean_test = pd.read_csv(tmp_path / "clean" / "test.csv", index_col=0)
    assert len(clean_test) == 20 and not clean_test["path"].str.contains("copy_").any()
    for name in ("train", "valid"):  # untouched splits come out as they went in, byte for byte
        assert (tmp_path / "clean" / f"{name}.csv").read_text() == (leaky / f"{name}.csv").read_text()
    _, _, again = _audit_leakage(_clean_root(tmp_path, leaky))
    assert again["pairs"] == [] and again["verdict"].level == "pass"


def test_damaged_files_with_equal_bytes_are_no_leak(leaky, tmp_path):
    """Two empty files, or two saved "403 Forbidden" pages, have one sha256: they were an exact leak
    that failed the audit, and write_clean_csvs dropped a test row that leaked nothing."""
    root = Path(shutil.copytree(leaky, tmp_path / "damaged"))
    for relative, content in (("train/fake/train003.jpg", b"<html>403 Forbidden</html>"),
                              ("test/fake/test003.jpg", b"<html>403 Forbidden</html>"),
                              ("valid/real/valid000.jpg", b""), ("test/real/test000.jpg", b"")):  # fmt: skip
        (root / IMAGE_ROOT / relative).write_bytes(content)

    splits, images, leakage = _audit_leakage(root)

    assert images["damaged"].notna().sum() == 4
    assert {p["b_path"].rsplit("/", 1)[-1] for p in leakage["pairs"]} == {"copy_a.jpg", "copy_b.jpg", "copy_c.jpg"}
    assert [(c["later"], c["exact"] + c["near"]) for c in leakage["counts"]] == [("valid", 0), ("test", 3), ("test", 0)]
    assert leakage["verdict"].message.startswith("3 leaked image(s);")
    assert leakage["drop_rows"] == {"test": [22, 23, 24]}  # the copies, not test000/test003 (lines 2 and 5)
    written = write_clean_csvs(splits, leakage["drop_rows"], tmp_path / "out")
    assert {s: w["dropped"] for s, w in written.items()} == {"train": 0, "valid": 0, "test": 3}


@pytest.mark.parametrize("dataset", ["synthetic", "kaggle_140k", "batch"])
def test_the_clean_csv_overrides_move_every_audited_split_of_any_dataset_config(leaky, tmp_path, dataset):
    """dataset.csv_dir=<run dir>/clean, the advice before, left dataset=batch training and validating on
    the leaky batch CSVs. The run dir is a sweep job's, with characters Hydra and the shell must be told."""
    from hydra import compose, initialize_config_dir

    from deepfake.audit.pipeline import clean_overrides

    splits, _, leakage = _audit_leakage(leaky)
    written = write_clean_csvs(splits, leakage["drop_rows"], tmp_path / "0_audit.seed=1,x=it's here")

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", f"dataset={dataset}",
                                           *shlex.split(clean_overrides(splits, written))])  # fmt: skip
    for name, key in (("train", "train_csv"), ("valid", "val_csv"), ("test", "test_csv")):
        assert cfg.dataset[key] == written[name]["path"] and Path(cfg.dataset[key]).is_file(), key


def test_the_clean_csv_overrides_quote_a_path_hydras_lexer_cannot_read_bare(leaky, tmp_path):
    """Python's \\w takes é for a word character; Hydra's lexer does not, and the printed line failed."""
    from hydra import compose, initialize_config_dir

    from deepfake.audit.pipeline import clean_overrides

    splits = read_splits(leaky, ("train", "test"))
    written = write_clean_csvs(splits, {}, tmp_path / "josé")
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=shlex.split(clean_overrides(splits, written)))
    assert cfg.dataset.train_csv == written["train"]["path"] and "josé" in cfg.dataset.test_csv


def test_the_clean_csv_overrides_name_only_the_splits_audited(leaky, tmp_path):
    from deepfake.audit.pipeline import clean_overrides

    splits = read_splits(leaky, ("train", "test"))
    written = write_clean_csvs(splits, {}, tmp_path)

    assert clean_overrides(splits, written) == (f"dataset.train_csv={tmp_path}/clean/train.csv "
                                                f"dataset.test_csv={tmp_path}/clean/test.csv")  # fmt: skip


def _clean_root(tmp_path, leaky):
    """The clean CSVs beside the original images, as dataset.csv_dir=<run dir>/clean would read them."""
    root = tmp_path / "clean"
    (root / IMAGE_ROOT).parent.mkdir(parents=True, exist_ok=True)
    (root / IMAGE_ROOT).symlink_to(leaky / IMAGE_ROOT, target_is_directory=True)
    return root


def test_the_manifest_digest_is_used_instead_of_hashing(leaky):
    train_path, test_path = (str(leaky / IMAGE_ROOT / p) for p in ("train/real/train000.jpg", "test/real/test000.jpg"))
    facts = gather_facts([train_path, test_path], known_sha256={train_path: "same", test_path: "same"}, threads=1)

    assert facts["sha256"].tolist() == ["same", "same"]


@pytest.mark.parametrize("max_distance", [0, 3, 8, 10, 20])
def test_hamming_index_finds_exactly_what_brute_force_finds(max_distance):
    rng = np.random.default_rng(max_distance)
    items = rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64, endpoint=True)
    # Queries planted at every distance 0..24 from random items, plus unrelated ones.
    flips = [rng.choice(64, k, replace=False) for k in rng.integers(0, 25, 400)]
    planted = [items[rng.integers(len(items))] ^ np.uint64(sum(1 << int(b) for b in bits)) for bits in flips]
    queries = np.concatenate([np.array(planted, np.uint64), rng.integers(0, 2**63, 100, dtype=np.uint64)])

    query_index, item_index, distance = HammingIndex(items, max_distance).query(queries, block=97)

    brute = popcount(queries[:, None] ^ items[None, :])
    expected = set(zip(*np.nonzero(brute <= max_distance)))
    assert set(zip(query_index.tolist(), item_index.tolist())) == {(int(q), int(i)) for q, i in expected}
    assert (distance == brute[query_index, item_index]).all()


def test_hamming_index_refuses_a_distance_it_cannot_search():
    with pytest.raises(ValueError, match="max_distance=32"):
        HammingIndex(np.zeros(3, np.uint64), 32)


def test_clean_csvs_of_splits_whose_files_share_a_name_do_not_overwrite_each_other(leaky, tmp_path):
    splits, _, leakage = _audit_leakage(leaky)
    for split in splits:  # train/data.csv, valid/data.csv, test/data.csv
        (tmp_path / split.name).mkdir()
        split.csv_path = (tmp_path / split.name / "data.csv").resolve()
        split.csv_path.write_text((leaky / f"{split.name}.csv").read_text())

    written = write_clean_csvs(splits, leakage["drop_rows"], tmp_path / "out")

    assert sorted(p.name for p in (tmp_path / "out" / "clean").iterdir()) == ["test.csv", "train.csv", "valid.csv"]
    for name, facts in written.items():  # each split's own rows, less what it leaked
        source_rows = len((leaky / f"{name}.csv").read_text().splitlines()) - 1
        assert facts["rows"] == source_rows - facts["dropped"], name
    assert written["test"]["dropped"] == 3


def test_an_image_leaked_from_two_earlier_splits_counts_once_in_the_verdict():
    from deepfake.audit.leakage import judge_leakage

    # Test image 9 duplicates train image 1 and valid image 5; valid image 5 duplicates train image 1.
    leaks = pd.DataFrame({"later": [5, 9, 9], "earlier": [1, 1, 5], "kind": [EXACT] * 3})
    counts = [{"earlier": "train", "later": "valid", "exact": 1, "near": 0, "share_of_later": 0.5},
              {"earlier": "train", "later": "test", "exact": 1, "near": 0, "share_of_later": 0.25},
              {"earlier": "valid", "later": "test", "exact": 1, "near": 0, "share_of_later": 0.25}]  # fmt: skip
    verdict = judge_leakage(counts, leaks)
    assert verdict.level == "fail" and verdict.message.startswith("2 leaked image(s);")
