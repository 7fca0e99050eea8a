"""Kaggle split CSVs as downloaded, their one-line DataErrors, and CsvImageDataset."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deepfake.data.csv_dataset import CsvImageDataset, read_split_csv
from deepfake.data.transforms import build_eval_transform, build_train_transform
from deepfake.errors import DataError

MEAN = STD = (0.5, 0.5, 0.5)
# Kaggle's own header and row shapes: an unnamed index column, paths relative to the image root.
KAGGLE_HEADER = ",original_path,id,label,label_str,path"
KAGGLE_ROWS = [
    "0,/kaggle/input/ffhq/resized/31355.png,31355,1,real,train/real/31355.jpg",
    "1,/kaggle/input/1m-faces/1m_faces_02/BSVNA7L31W.jpg,BSVNA7L31W,0,fake,train/fake/BSVNA7L31W.jpg",
    "2,/kaggle/input/ffhq/resized/02004.png,2004,1,real,train/real/02004.jpg",
]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def kaggle(tmp_path):
    """A Kaggle-shaped dataset: the CSV beside real_vs_fake/real-vs-fake/ holding tiny images."""
    root = tmp_path / "real_vs_fake" / "real-vs-fake"
    for row in KAGGLE_ROWS:
        image_path = root / row.rsplit(",", 1)[1]
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16), (60, 120, 180)).save(image_path)
    return _write(tmp_path / "train.csv", [KAGGLE_HEADER, *KAGGLE_ROWS]), root


def test_reads_kaggle_csv_as_downloaded(kaggle):
    csv_path, root = kaggle

    frame = read_split_csv(csv_path, root)

    assert frame["path"].tolist() == [str(root / row.rsplit(",", 1)[1]) for row in KAGGLE_ROWS]
    assert frame["target"].tolist() == [0, 1, 0]  # Kaggle label 1 = real; target 1 = fake
    assert frame["row"].tolist() == [2, 3, 4]
    assert frame["label_str"].tolist() == ["real", "fake", "real"]
    assert "mask_path" not in frame.columns


def test_real_label_zero_flips_targets(kaggle):
    csv_path, root = kaggle
    words_dropped = pd.read_csv(csv_path).drop(columns=["label_str"])
    words_dropped.to_csv(csv_path, index=False)

    frame = read_split_csv(csv_path, root, real_label=0)

    assert frame["target"].tolist() == [1, 0, 1]


def test_a_polarity_that_label_str_contradicts_is_refused_and_a_stray_row_warned_of(kaggle, caplog):
    """dataset.real_label=0 on Kaggle's CSVs trained an inverted model without a word (and it could
    become the global best): label_str, Kaggle's real/fake beside each label, says so."""
    csv_path, root = kaggle
    with pytest.raises(DataError, match=r"label_str contradicts label read with dataset.real_label=0 in 3 of 3 rows "
                                        r"\(line 2: label=1, label_str=real\); set dataset.real_label=1"):  # fmt: skip
        read_split_csv(csv_path, root, real_label=0)
    _write(csv_path, [KAGGLE_HEADER, *KAGGLE_ROWS[:2], KAGGLE_ROWS[2].replace(",1,real,", ",1,fake,")])
    with caplog.at_level("WARNING", logger="deepfake.data.csv_dataset"):
        assert read_split_csv(csv_path, root)["target"].tolist() == [0, 1, 0]  # the label is what counts
    assert "label_str contradicts label in 1 of 3 rows (line 4: label=1, label_str=fake)" in caplog.text


def test_extra_columns_and_missing_index_column_are_fine(kaggle, tmp_path):
    _, root = kaggle
    lines = ["original_path,id,label,label_str,path,source,quality"]
    lines += [row.split(",", 1)[1] + ",scraped,0.9" for row in KAGGLE_ROWS]
    csv_path = _write(tmp_path / "extra.csv", lines)

    frame = read_split_csv(csv_path, root)

    assert frame["target"].tolist() == [0, 1, 0]
    assert frame["source"].tolist() == ["scraped"] * 3


def test_custom_path_and_label_columns(kaggle, tmp_path):
    _, root = kaggle
    lines = ["file,is_real", "train/real/31355.jpg,1", "train/fake/BSVNA7L31W.jpg,0"]
    csv_path = _write(tmp_path / "custom.csv", lines)

    frame = read_split_csv(csv_path, root, path_column="file", label_column="is_real")

    assert frame["target"].tolist() == [0, 1]
    assert frame["path"].iloc[0] == str(root / "train/real/31355.jpg")


def test_mask_path_is_resolved_and_empty_stays_empty(kaggle, tmp_path):
    _, root = kaggle
    lines = [KAGGLE_HEADER + ",mask_path", KAGGLE_ROWS[0] + ",", KAGGLE_ROWS[1] + ",train/fake/BSVNA7L31W_mask.png"]
    csv_path = _write(tmp_path / "masks.csv", lines)

    frame = read_split_csv(csv_path, root)

    assert frame["mask_path"].tolist() == ["", str(root / "train/fake/BSVNA7L31W_mask.png")]


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([], "is empty"),
        ([KAGGLE_HEADER], "no rows"),
        ([",original_path,id,label,label_str", "0,a,b,1,real"], "no column 'path' (columns: Unnamed: 0, original_path"),
        ([",original_path,id,label_str,path", "0,a,b,real,x.jpg"], "no column 'label'"),
        ([KAGGLE_HEADER, KAGGLE_ROWS[0], "1,o,i,2,fake,train/fake/x.jpg"], "train.csv:3: label '2' is not 0 or 1"),
        (
            [KAGGLE_HEADER, "0,o,i,real,real,train/real/x.jpg"],
            "train.csv:2: label 'real' is not 0 or 1 (labels are numbers: 1 = real, 0 = fake)",
        ),
        ([KAGGLE_HEADER, KAGGLE_ROWS[0], "1,o,i,,fake,train/fake/x.jpg"], "train.csv:3: label is empty"),
        ([KAGGLE_HEADER, KAGGLE_ROWS[0], "1,o,i,0,fake,"], "train.csv:3: empty path"),
        ([KAGGLE_HEADER, '0,"unclosed,1,1,real,x.jpg'], "cannot read CSV"),
    ],
    ids=[
        "empty file",
        "header only",
        "no path column",
        "no label column",
        "label 2",
        "label text",
        "label empty",
        "path empty",
        "bad quoting",
    ],
)
def test_bad_csv_raises_one_line_naming_the_problem(kaggle, lines, expected):
    csv_path, root = kaggle
    csv_path.write_text("\n".join(lines) + ("\n" if lines else ""))

    with pytest.raises(DataError) as error:
        read_split_csv(csv_path, root)

    message = str(error.value)
    assert expected in message and "\n" not in message
    assert str(csv_path) in message


@pytest.mark.parametrize("outside", ["../escape.jpg", "train/../../escape.jpg", "/etc/passwd"])
def test_paths_outside_the_root_are_refused(kaggle, outside):
    csv_path, root = kaggle
    _write(csv_path, [KAGGLE_HEADER, KAGGLE_ROWS[0], f"1,o,i,0,fake,{outside}"])

    with pytest.raises(DataError, match=r"train\.csv:3: path .* points outside the image root"):
        read_split_csv(csv_path, root)


def test_missing_csv_and_missing_root_name_the_path(kaggle, tmp_path):
    csv_path, root = kaggle

    with pytest.raises(DataError, match=r"nowhere\.csv: CSV file not found"):
        read_split_csv(tmp_path / "nowhere.csv", root)
    with pytest.raises(DataError, match=r"no_images: image root directory not found"):
        read_split_csv(csv_path, tmp_path / "no_images")
    with pytest.raises(DataError, match="real_label=2"):
        read_split_csv(csv_path, root, real_label=2)


def test_dataset_items(kaggle):
    csv_path, root = kaggle
    dataset = CsvImageDataset(csv_path, root, build_eval_transform(16, mean=MEAN, std=STD))

    item = dataset[1]

    assert len(dataset) == 3
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["target"].dtype == torch.float32 and item["target"].item() == 1.0
    assert item["index"] == 1 and item["damaged"] is False
    assert dataset.targets.tolist() == [0, 1, 0]
    assert dataset.paths == dataset.read_frame()["path"].tolist()
    assert dataset.damage_reason(1) is None


def test_without_transform_gives_unit_range_tensor(kaggle):
    csv_path, root = kaggle

    dataset = CsvImageDataset(csv_path, root)

    image = dataset[0]["image"]

    pixels = torch.from_numpy(np.array(Image.open(dataset.paths[0]))).permute(2, 0, 1)
    assert image.shape == (3, 16, 20)
    assert torch.allclose(image, pixels / 255, atol=1e-6)


def test_damaged_image_is_served_black_and_flagged(kaggle):
    csv_path, root = kaggle
    (root / "train/fake/BSVNA7L31W.jpg").write_bytes(b"")
    (root / "train/real/02004.jpg").unlink()
    dataset = CsvImageDataset(csv_path, root, build_eval_transform(16, mean=MEAN, std=STD), fallback_size=32)

    empty, missing = dataset[1], dataset[2]

    assert empty["damaged"] and missing["damaged"]
    black = (torch.zeros(3, 16, 16) - 0.5) / 0.5
    assert torch.equal(empty["image"], black)
    assert "empty" in dataset.damage_reason(1)
    assert "missing" in dataset.damage_reason(2)


def test_a_damaged_image_met_through_a_subset_is_logged_by_its_path(kaggle, caplog):
    """task=bench validates on a Subset of the split, whose items' indices are the split's: logging a
    damaged one there was an AttributeError ('Subset' has no paths) that ended the bench."""
    from torch.utils.data import Subset

    from deepfake.data.damaged import DamagedImageLog

    csv_path, root = kaggle
    (root / "train/fake/BSVNA7L31W.jpg").write_bytes(b"")
    dataset = CsvImageDataset(csv_path, root, fallback_size=16)
    first = Subset(dataset, [1, 2])
    damaged = DamagedImageLog()
    with caplog.at_level("WARNING", logger="deepfake.data.damaged"):
        damaged.record("valid", first, [item["index"] for item in first if item["damaged"]])
    assert damaged.counts() == {"valid": 1}
    assert caplog.messages == [f"damaged image replaced by a black image: {root / 'train/fake/BSVNA7L31W.jpg'} "
                               f"({dataset.damage_reason(1)})"]  # fmt: skip


def test_dataset_pickles_with_its_transform(kaggle):
    csv_path, root = kaggle
    dataset = CsvImageDataset(csv_path, root, build_train_transform(16, mean=MEAN, std=STD, color_jitter=0.2))

    clone = pickle.loads(pickle.dumps(dataset))

    torch.manual_seed(3)
    expected = dataset[0]["image"]
    torch.manual_seed(3)
    assert torch.equal(clone[0]["image"], expected)


def test_spawned_worker_loads_batches(kaggle):
    csv_path, root = kaggle
    (root / "train/real/02004.jpg").write_text("not an image")
    dataset = CsvImageDataset(csv_path, root, build_train_transform(16, mean=MEAN, std=STD))
    loader = DataLoader(dataset, batch_size=3, num_workers=1, multiprocessing_context="spawn")

    (batch,) = list(loader)

    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["target"].tolist() == [0.0, 1.0, 0.0]
    assert batch["damaged"].tolist() == [False, False, True]
    assert np.array_equal(batch["index"].numpy(), [0, 1, 2])


def test_repeated_rows_are_warned_of_once_per_dataset_even_when_its_frame_is_read_again(kaggle, caplog):
    """task=audit made the dataset, then read its frame: every repeat warning came twice."""
    csv, root = kaggle
    caplog.set_level("WARNING", logger="deepfake.data.csv_dataset")  # another test may have raised it
    _write(csv, [KAGGLE_HEADER, *KAGGLE_ROWS, "3" + KAGGLE_ROWS[0][1:]])
    dataset = CsvImageDataset(csv, root)
    frame = dataset.read_frame()
    assert len(frame) == 4 and frame["path"].duplicated().sum() == 1
    warned = [r.getMessage() for r in caplog.records if "repeat an earlier row" in r.getMessage()]
    assert len(warned) == 1 and "1 row(s) repeat an earlier row's path (first: line 5 repeats line 2" in warned[0]
