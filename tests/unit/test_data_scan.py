"""The damaged-image scan, and its answer remembered across sessions for files that did not change."""

import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.data.scan import find_damaged_remembered
from deepfake.errors import DataError
from deepfake.tasks.preflight import check_images


@pytest.fixture
def images(tmp_path):
    """Four JPEGs, the third truncated."""
    paths = []
    for number in range(4):
        path = tmp_path / "images" / f"{number}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * number, dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    with open(paths[2], "r+b") as handle:
        handle.truncate(100)
    return paths


def _corrupt_keeping_size_and_time(path: str) -> None:
    """Rewritten in place with its mtime put back, as ``cp -p`` or ``rsync -a`` over it would."""
    stat = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(b"\x00" * stat.st_size)  # not a JPEG any more, same length
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    while os.stat(path).st_ctime_ns == stat.st_ctime_ns:  # the kernel's clock ticks every few ms
        time.sleep(0.005)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_a_second_scan_of_unchanged_files_is_read_back_and_a_changed_file_is_scanned_again(tmp_path, images):
    memo = tmp_path / "scans"
    first, remembered = find_damaged_remembered(images, memo)
    assert not remembered and [path for path, _ in first] == [images[2]]

    again, remembered = find_damaged_remembered(images, memo)  # unchanged: read back, not decoded
    assert remembered and again == first

    # Same names, sizes and mtimes, other bytes: scanned again (this file no longer decodes).
    _corrupt_keeping_size_and_time(images[0])
    rescanned, remembered = find_damaged_remembered(images, memo)
    assert not remembered and [path for path, _ in rescanned] == [images[0], images[2]]
    assert find_damaged_remembered(images, memo) == (rescanned, True)

    # A file gone, or another list of files: scanned, never answered from another list's memo.
    os.unlink(images[3])
    gone, remembered = find_damaged_remembered(images, memo)
    assert not remembered and [path for path, _ in gone] == [images[0], images[2], images[3]]
    assert find_damaged_remembered(images[:2], memo)[1] is False


def test_another_pillow_scans_again(tmp_path, images, monkeypatch):
    """An upgrade can change what decodes: the memo of the old decoder does not answer for the new."""
    import PIL

    memo = tmp_path / "scans"
    assert find_damaged_remembered(images, memo)[1] is False
    assert find_damaged_remembered(images, memo)[1] is True
    monkeypatch.setattr(PIL, "__version__", "0.0.upgraded")
    assert find_damaged_remembered(images, memo)[1] is False


def test_an_unreadable_memo_is_scanned_again_and_replaced(tmp_path, images):
    memo = tmp_path / "scans"
    first, _ = find_damaged_remembered(images, memo)
    [kept] = memo.iterdir()
    kept.write_text("{not json")
    again, remembered = find_damaged_remembered(images, memo)
    assert not remembered and again == first
    assert find_damaged_remembered(images, memo) == (first, True)


def test_the_preflight_check_says_when_it_answered_from_an_earlier_scan_and_still_enforces_the_limit(
    tmp_path, images, caplog
):
    csv = tmp_path / "train.csv"
    csv.write_text("path,label\n" + "".join(f"images/{os.path.basename(p)},1\n" for p in images))
    dataset = CsvImageDataset(csv, tmp_path)
    memo = tmp_path / "scans"
    with caplog.at_level(logging.INFO, logger="deepfake.tasks.preflight"):
        assert check_images(dataset, "train", 0.5, memo) == 1
        assert check_images(dataset, "train", 0.5, memo) == 1
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "4 train images checked" in infos[0] and infos[0].endswith("1 damaged")
    assert "4 train images unchanged since they were checked" in infos[1] and infos[1].endswith("1 damaged")
    with pytest.raises(DataError, match=r"1 of 4 images are damaged .* > dataset.max_bad_fraction=0.1"):
        check_images(dataset, "train", 0.1, memo)  # remembered, and still over this limit


def test_a_memo_folder_that_cannot_be_written_leaves_the_scan_standing(tmp_path, images, caplog):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="deepfake.data.scan"):
        damaged, remembered = find_damaged_remembered(images, blocked / "scans")
    assert not remembered and [path for path, _ in damaged] == [images[2]]
    assert any("could not keep the image scan's answer" in r.getMessage() for r in caplog.records)
