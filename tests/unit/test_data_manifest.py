"""The manifest's file list: linked folders followed once, no loop on a link up the tree, and a
file name the manifest cannot hold named in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake.data.manifest import hash_tree, image_files
from deepfake.errors import DataError


def test_linked_folders_are_hashed_and_a_link_up_the_tree_does_not_loop(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "disk2" / "fake"
    (root / "real").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    (root / "real" / "a.jpg").write_bytes(b"a")
    (elsewhere / "b.jpg").write_bytes(b"b")
    (root / "fake").symlink_to(elsewhere, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)

    assert image_files(root) == ["fake/b.jpg", "real/a.jpg"]
    before = hash_tree(root)
    (elsewhere / "b.jpg").write_bytes(b"changed")
    assert hash_tree(root)["fake/b.jpg"] != before["fake/b.jpg"]


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(b"a")
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg"), "wb") as handle:
        handle.write(b"b")

    with pytest.raises(DataError, match=r"caf\\xe9\.jpg is not UTF-8; rename it"):
        image_files(tmp_path)


def test_make_manifest_says_it_in_one_line(tmp_path):
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg"), "wb") as handle:
        handle.write(b"b")
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_manifest.py"

    done = subprocess.run([sys.executable, script, "--root-dir", tmp_path, "--out", tmp_path / "m.csv"],
                          capture_output=True, text=True)  # fmt: skip

    assert done.returncode == 2 and done.stderr.startswith("ERROR ") and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "m.csv").exists()


def test_image_digests_are_hashed_once_then_read_back_until_a_file_changes(tmp_path, monkeypatch):
    import hashlib

    import deepfake.data.manifest as manifest
    from deepfake.data.manifest import image_sha256s_remembered

    files = [tmp_path / f"{name}.jpg" for name in "abc"]
    for number, path in enumerate(files):
        path.write_bytes(bytes([number]) * 100)
    paths, memo = [str(p) for p in files], tmp_path / "memo"
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert image_sha256s_remembered(paths, memo) == expected
    assert image_sha256s_remembered([*paths, str(tmp_path / "gone.jpg")], memo)[-1] == "missing"
    hashed = []
    monkeypatch.setattr(manifest, "file_sha256", lambda path: hashed.append(path) or "rehashed")
    assert image_sha256s_remembered(paths, memo) == expected and hashed == []  # read back, nothing hashed
    files[1].write_bytes(b"other bytes")  # another size: the remembered answer no longer applies
    assert image_sha256s_remembered(paths, memo) == ["rehashed"] * 3


def test_a_dangling_link_is_named_in_one_line(tmp_path):
    """file_sha256's FileNotFoundError traceback, in make_manifest.py and dataset.verify_manifest=true."""
    (tmp_path / "ok.jpg").write_bytes(b"a")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(DataError, match=r"gone.jpg: cannot be read \(No such file or directory\); fix or remove it"):
        hash_tree(tmp_path)
