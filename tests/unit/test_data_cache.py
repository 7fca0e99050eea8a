"""The decoded-image cache: the same tensors as decoding on the fly, keyed rebuilds, a resumed build."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.data.decoded_cache import _Builder, open_cache
from deepfake.data.transforms import build_eval_transform, build_train_transform
from deepfake.errors import DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _dataset(tmp_path: Path, sizes: list[tuple[int, int]], *, damaged: bool = True) -> Path:
    """Images of several shapes (landscape, portrait, square, smaller than img_size) plus one empty file."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for number, (width, height) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            root / f"{number}.jpg", quality=90
        )
        rows.append(f"{number}.jpg,{number % 2}")
    if damaged:
        (root / "empty.jpg").write_bytes(b"")
        rows.append("empty.jpg,0")
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "split.csv"


def _cached(csv: Path, transform, img_size: int, cache_dir: Path, *, interpolation: str = "bicubic",
            path_column: str = "path", **kwargs) -> CsvImageDataset:  # fmt: skip
    dataset = CsvImageDataset(csv, csv.parent / "images", transform, path_column=path_column, fallback_size=img_size)
    dataset.cache = open_cache(dataset.paths, csv_path=csv, root_dir=dataset.root_dir, img_size=img_size,
                               interpolation=interpolation, fallback_size=img_size, cache_dir=cache_dir, **kwargs)  # fmt: skip
    return dataset


def test_cached_images_evaluate_to_the_same_tensors_as_the_files(tmp_path):
    csv = _dataset(tmp_path, [(40, 30), (30, 50), (24, 24), (16, 20)])
    transform = build_eval_transform(24, mean=MEAN, std=STD)
    files = CsvImageDataset(csv, tmp_path / "images", transform, fallback_size=24)
    cached = _cached(csv, transform, 24, tmp_path / "cache")

    for index in range(len(files)):
        expected, got = files[index], cached[index]
        assert torch.equal(got["image"], expected["image"]), index
        assert got["damaged"] == expected["damaged"] and got["index"] == expected["index"]
    assert (
        cached.find_damaged()[0]
        == files.find_damaged()[0]
        == [(str(tmp_path / "images" / "empty.jpg"), "empty file (0 bytes)")]
    )
    assert cached.damage_reason(4) == "empty file (0 bytes)" and cached.damage_reason(0) is None
    # Training augments the cached image: the same random crop of the same framed pixels.
    train = build_train_transform(24, mean=MEAN, std=STD, crop_scale=(0.5, 1.0))
    cached.transform = train
    torch.manual_seed(3)
    augmented = cached[1]["image"]
    torch.manual_seed(3)
    assert torch.equal(augmented, train(cached.cache.image(1)))


def test_a_changed_img_size_or_file_builds_a_new_cache_and_an_unchanged_one_is_reused(tmp_path, caplog):
    csv = _dataset(tmp_path, [(40, 30), (30, 50)], damaged=False)
    cache_dir = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="deepfake.data.decoded_cache"):
        first = _cached(csv, None, 24, cache_dir).cache
        again = _cached(csv, None, 24, cache_dir).cache
        assert first.directory == again.directory
        assert sum("decoding" in record.message for record in caplog.records) == 1  # reused, not rebuilt

        bigger = _cached(csv, None, 32, cache_dir).cache
        assert bigger.directory != first.directory and bigger.array.shape == (2, 32, 32, 3)

        image = tmp_path / "images" / "0.jpg"
        Image.new("RGB", (40, 30), (255, 0, 0)).save(image)
        os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime even on a coarse clock
        redone = _cached(csv, None, 24, cache_dir).cache
    assert redone.directory not in (first.directory, bigger.directory)
    assert tuple(redone.array[0, 12, 12]) == pytest.approx((254, 0, 0), abs=2)  # the new pixels, not stale ones
    # The 24 px cache of the old files can never be served again: removed (20 GB at Kaggle's size); the
    # 32 px one is another size's, kept.
    assert not first.directory.exists() and bigger.directory.is_dir()
    assert sorted(p.name.split("-")[1] for p in cache_dir.iterdir() if p.is_dir()) == ["24px", "32px"]
    assert any("removed the superseded cache" in record.message for record in caplog.records)

    # Another CSV of the same name (an audit's clean/split.csv) has caches of its own: both stay.
    (tmp_path / "clean").mkdir()
    other = tmp_path / "clean" / "split.csv"
    other.write_text(csv.read_text().replace("1.jpg", "../images/1.jpg"))
    dataset = CsvImageDataset(other, tmp_path / "images", fallback_size=24)
    open_cache(dataset.paths, csv_path=other, root_dir=tmp_path / "images", img_size=24, interpolation="bicubic",
               fallback_size=24, cache_dir=cache_dir)  # fmt: skip
    assert redone.directory.is_dir()
    assert sorted(p.name.split("-")[1] for p in cache_dir.iterdir() if p.is_dir()) == ["24px", "24px", "32px"]


def test_an_image_rewritten_in_place_with_its_size_and_mtime_put_back_builds_a_new_cache(tmp_path):
    """``cp -p``, ``rsync -a`` or ``tar x`` over a file keeps its size and mtime: its ctime still changes."""
    csv = _dataset(tmp_path, [(40, 30), (30, 50)], damaged=False)
    first = _cached(csv, None, 24, tmp_path / "cache").cache
    assert _cached(csv, None, 24, tmp_path / "cache").cache.directory == first.directory  # unchanged: reused

    image = tmp_path / "images" / "0.jpg"
    before = image.stat()
    red = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(red, format="JPEG", quality=90)
    assert len(red.getvalue()) < before.st_size  # padded to the old size: Pillow stops at the JPEG's end
    image.write_bytes(red.getvalue().ljust(before.st_size, b"\0"))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    while image.stat().st_ctime_ns == before.st_ctime_ns:  # the kernel's clock ticks every few ms
        time.sleep(0.005)
        os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    redone = _cached(csv, None, 24, tmp_path / "cache").cache
    assert redone.directory != first.directory and not first.directory.exists()
    assert tuple(redone.array[0, 12, 12]) == pytest.approx((254, 0, 0), abs=2)  # the new pixels, not stale ones


def test_a_cache_beside_another_of_the_same_csv_is_kept_and_never_served_for_it(tmp_path):
    """Another resize rule, or the same CSV read through another path column, is a cache of its own that a
    run beside this one may be reading: neither is removed as superseded. And two files of one size and
    one mtime (unpacked from one archive) listed in the other order are not the same cache."""
    root = tmp_path / "images"
    root.mkdir()
    for name, shade in (("black.bmp", 0), ("white.bmp", 255)):  # BMPs: the same size on disk
        Image.new("RGB", (24, 24), (shade,) * 3).save(root / name)
        os.utime(root / name, ns=(10**18, 10**18))
    csv = tmp_path / "split.csv"
    csv.write_text("path,swapped,label\nblack.bmp,white.bmp,0\nwhite.bmp,black.bmp,1\n")
    cache_dir = tmp_path / "cache"

    bicubic = _cached(csv, None, 24, cache_dir).cache
    bilinear = _cached(csv, None, 24, cache_dir, interpolation="bilinear").cache
    swapped = _cached(csv, None, 24, cache_dir, path_column="swapped").cache
    assert len({bicubic.directory, bilinear.directory, swapped.directory}) == 3
    assert all(cache.directory.is_dir() for cache in (bicubic, bilinear, swapped))
    assert (bicubic.array[0].max(), swapped.array[0].min()) == (0, 255)  # row 0: black, then white


BUILD = """
import sys
from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.data.decoded_cache import open_cache
csv, cache_dir = sys.argv[1], sys.argv[2]
dataset = CsvImageDataset(csv, sys.argv[3])
open_cache(dataset.paths, csv_path=csv, root_dir=dataset.root_dir, img_size=48, interpolation="bicubic",
           fallback_size=48, cache_dir=cache_dir, chunk=8, threads=1)
"""


def test_a_killed_build_resumes_where_it_stopped_and_matches_a_fresh_one(tmp_path, caplog):
    csv = _dataset(tmp_path, [(256, 256)] * 600)
    cache_dir = tmp_path / "cache"
    build = subprocess.Popen([sys.executable, "-c", BUILD, str(csv), str(cache_dir), str(tmp_path / "images")])
    progress = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and build.poll() is None:
        found = list(cache_dir.glob("*.partial/progress.json"))
        try:
            if found and json.loads(found[0].read_text())["done"] >= 16:
                progress = found[0]
                break
        except (OSError, ValueError):  # replaced while being read
            pass
        time.sleep(0.01)
    build.send_signal(signal.SIGKILL)
    build.wait()
    assert progress is not None, "the build ended before it could be killed"
    done = json.loads(progress.read_text())["done"]
    assert 16 <= done < 601

    with caplog.at_level(logging.INFO, logger="deepfake.data.decoded_cache"):
        resumed = _cached(csv, None, 48, cache_dir, chunk=64).cache
    assert f"resuming at image {done}" in caplog.text
    assert not list(cache_dir.glob("*.partial"))
    fresh = _cached(csv, None, 48, tmp_path / "fresh").cache
    assert np.array_equal(resumed.array, fresh.array) and resumed.damaged == fresh.damaged == {
        600: "empty file (0 bytes)"
    }


def test_a_cache_the_disk_cannot_hold_is_refused_in_units_that_show_its_size(tmp_path, monkeypatch):
    csv = _dataset(tmp_path, [(40, 30), (30, 50)], damaged=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 1024))
    with pytest.raises(DataError, match=r"needs 3\.4 KiB but .* has 1\.0 KiB free; free space"):
        _cached(csv, None, 24, tmp_path / "cache")  # 2 x 24 x 24 x 3 bytes: "0.0 GiB" said nothing
    assert not list((tmp_path / "cache").glob("*.partial"))


@pytest.mark.parametrize("where", ["a_file", "a_file/below"])
def test_an_unusable_cache_folder_is_refused_in_one_line_naming_the_setting(tmp_path, where):
    csv = _dataset(tmp_path, [(40, 30)], damaged=False)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(
        DataError, match=r"cannot be kept in .*a_file.* \(a file is in the way\); set dataset\.cache_dir"
    ):
        _cached(csv, None, 24, tmp_path / where)


def test_a_superseded_partial_build_is_removed_unless_a_live_process_is_building_it(tmp_path, monkeypatch):
    csv = _dataset(tmp_path, [(40, 30), (30, 50)], damaged=False)
    cache_dir, image = tmp_path / "cache", tmp_path / "images" / "0.jpg"
    decode = _Builder._decode

    def stops_at_the_second_image(self, path):
        if path.endswith("1.jpg"):
            raise KeyboardInterrupt  # a build stopped after its first chunk, its full-size memmap left behind
        return decode(self, path)

    monkeypatch.setattr(_Builder, "_decode", stops_at_the_second_image)
    with pytest.raises(KeyboardInterrupt):
        _cached(csv, None, 24, cache_dir, chunk=1)
    monkeypatch.undo()
    [stopped] = cache_dir.glob("*.partial")

    def touch() -> None:  # a later mtime even on a coarse clock: another key
        later = image.stat().st_mtime_ns + 10**9
        os.utime(image, ns=(later, later))

    touch()
    # A partial build whose lock is held is one a live process is building: kept.
    with FileLock(f"{cache_dir / stopped.name.removesuffix('.partial')}.lock"):
        first = _cached(csv, None, 24, cache_dir).cache
    assert stopped.is_dir()
    touch()
    latest = _cached(csv, None, 24, cache_dir).cache
    assert [p for p in cache_dir.iterdir() if p.is_dir()] == [latest.directory]  # the stopped build and `first` gone
    assert not first.directory.exists()
