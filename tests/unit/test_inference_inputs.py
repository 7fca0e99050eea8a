"""What task=predict scores: folders walked recursively, CSVs with or without labels, one-line errors."""

import os

import numpy as np
import pytest
from PIL import Image

from deepfake.errors import DataError
from deepfake.inference import discover_inputs


def _image(path, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (12, 10), 128).save(path)
    return path


def test_folder_is_walked_recursively_in_sorted_order_and_others_are_skipped(tmp_path):
    root = tmp_path / "photos"
    expected = [  # a folder's own files (sorted), then its subfolders (sorted), depth first
        _image(root / "B.PNG"),
        _image(root / "a.jpeg"),
        _image(root / "nested" / "gray.JPG", mode="L"),
        _image(root / "nested" / "deeper" / "x.webp"),
        _image(root / "with space" / "z.tif"),
        _image(root / "with space" / "été ünï.bmp"),  # sorted by code point: z < é
    ]
    (root / "notes.txt").write_text("not an image")
    (root / "nested" / "data.csv").write_text("path\n")

    inputs = discover_inputs(root)

    assert inputs.paths == [str(p) for p in expected]
    assert sorted(os.path.basename(p) for p in inputs.skipped) == ["data.csv", "notes.txt"]
    assert inputs.source == "folder" and not inputs.labelled
    assert np.isnan(inputs.target(0))


def test_symlinked_files_and_folders_are_followed_once(tmp_path):
    outside = tmp_path / "elsewhere"
    _image(outside / "linked.png")
    root = tmp_path / "photos"
    _image(root / "own.png")
    (root / "link to folder").symlink_to(outside, target_is_directory=True)
    (root / "alias.png").symlink_to(root / "own.png")
    (root / "loop").symlink_to(root, target_is_directory=True)  # would walk forever if followed again

    inputs = discover_inputs(root)

    assert [os.path.relpath(p, root) for p in inputs.paths] == ["alias.png", "own.png", "link to folder/linked.png"]


def test_a_single_image_is_an_input(tmp_path):
    image = _image(tmp_path / "one photo.png")
    assert discover_inputs(image).paths == [str(image)]


def test_csv_paths_start_at_root_dir_and_labels_follow_the_polarity(tmp_path):
    images = tmp_path / "images"
    _image(images / "r.png")
    _image(images / "f.png")
    absolute = _image(tmp_path / "abs.png")
    csv = tmp_path / "lists" / "mine.csv"
    csv.parent.mkdir()
    csv.write_text(f"path,label\nr.png,1\nf.png,0\n{absolute},0\n")

    inputs = discover_inputs(csv, root_dir=images)

    assert inputs.paths == [str(images / "r.png"), str(images / "f.png"), str(absolute)]
    assert inputs.labelled and inputs.targets.tolist() == [0, 1, 1]  # label 1 = real -> target 0
    assert discover_inputs(csv, root_dir=images, real_label=0).targets.tolist() == [1, 0, 0]


def test_csv_without_labels_defaults_to_its_own_folder(tmp_path):
    _image(tmp_path / "sub" / "a.png")
    csv = tmp_path / "list.csv"
    csv.write_text("file\nsub/a.png\n")

    inputs = discover_inputs(csv, path_column="file")

    assert inputs.paths == [str(tmp_path / "sub" / "a.png")] and not inputs.labelled


@pytest.mark.parametrize(
    "content, message",
    [
        ("path,label\na.png,2\n", r"list.csv:2: label '2' is not 0 or 1; fix the row or set predict.label_column"),
        ("file\na.png\n", r"no column 'path'.*predict.path_column"),
        ("path\n\n \n", r"CSV has a header but no rows|empty path"),
    ],
)
def test_bad_csvs_name_the_row_or_key(tmp_path, content, message):
    csv = tmp_path / "list.csv"
    csv.write_text(content)
    with pytest.raises(DataError, match=message):
        discover_inputs(csv)


def test_missing_input_and_input_without_images_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"predict.input=.*nowhere: no such file or folder"):
        discover_inputs(tmp_path / "nowhere")
    (tmp_path / "empty" / "inner").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds no image file \(1 other file\(s\) skipped\)"):
        discover_inputs(tmp_path / "empty")
    (tmp_path / "model.pth").write_bytes(b"x")
    with pytest.raises(DataError, match="export.verify_input=.*model.pth: not an image"):
        discover_inputs(tmp_path / "model.pth", key="export.verify_input")


def test_a_file_name_that_is_not_utf8_is_named_before_anything_is_scored(tmp_path):
    """predictions.csv is UTF-8: such a name ended task=predict with a UnicodeEncodeError traceback
    after scoring, and no predictions.csv (the manifest refuses these names the same way)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.jpg")
    Image.new("RGB", (8, 8)).save(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")))
    with pytest.raises(
        DataError, match=r"^predict.input=.*: the file name .*caf\\xe9\.jpg is not UTF-8, as predictions"
    ):
        discover_inputs(tmp_path)


def test_without_a_label_column_a_csv_with_labels_in_words_is_an_unlabelled_input(tmp_path):
    """task=export reads its check images' paths only: a CSV labelled real/fake in words was refused."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    (tmp_path / "check.csv").write_text("path,label\na.jpg,fake\n")
    with pytest.raises(DataError, match="label"):
        discover_inputs(tmp_path / "check.csv")
    inputs = discover_inputs(tmp_path / "check.csv", label_column=None, key="export.verify_input")
    assert inputs.paths == [str(tmp_path / "a.jpg")] and inputs.targets is None


def test_a_csv_without_its_path_column_names_the_setting_of_the_task_reading_it(tmp_path):
    """task=export said to set predict.path_column, which export does not read."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    (tmp_path / "check.csv").write_text("file\na.jpg\n")
    with pytest.raises(DataError, match=r"no column 'path' \(columns: file\); fix the CSV or set export.path_column$"):
        discover_inputs(tmp_path / "check.csv", label_column=None, key="export.verify_input")
    inputs = discover_inputs(tmp_path / "check.csv", label_column=None, key="export.verify_input", path_column="file")
    assert inputs.paths == [str(tmp_path / "a.jpg")]


def test_a_folder_of_an_earlier_predicts_overlays_is_no_input(tmp_path):
    """predict.output=<the input folder> with predict.cam wrote cam/ there; a later predict of that folder
    into another output scored the overlays as photos. Only the folder predict marked is left out."""
    root = tmp_path / "photos"
    photo = _image(root / "a.jpg")
    _image(root / "cam" / "00000_a.png")
    (root / "cam" / ".predict_overlays").write_text("overlays of task=predict")
    mine = _image(root / "camera" / "00001_b.png")  # named like an overlay, in a folder predict never marked

    assert discover_inputs(root).paths == [str(photo), str(mine)]
    # Given itself as the input, a marked folder is what the user asked to score.
    assert discover_inputs(root / "cam").paths == [str(root / "cam" / "00000_a.png")]
