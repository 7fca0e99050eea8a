"""A dataset manifest: the sha256 of every image under the image root, to notice silent changes.

``scripts/make_manifest.py`` writes it once (a CSV ``path,bytes,sha256``, paths relative to the
root); ``dataset.verify_manifest=true`` compares the tree with it before training and names the
files that changed, appeared or vanished. Results stay comparable only on the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from deepfake.data.images import IMAGE_SUFFIXES
from deepfake.data.scan import DEFAULT_SCAN_THREADS, list_for_message, not_utf8, remembered
from deepfake.errors import DataError

MANIFEST_FIELDS = ["path", "bytes", "sha256"]


def image_files(root: str | os.PathLike) -> list[str]:
    """Every image under ``root``, as sorted POSIX paths relative to it.

    Linked folders are followed, as the CSV loader reads through them (a class folder linked from
    another disk), each real folder once (a link back up the tree does not loop). A file name that
    is not valid UTF-8 cannot be written into the manifest: DataError names it.
    """
    root = Path(root)
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(folder))
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in seen]
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                relative = Path(folder, name).relative_to(root).as_posix()
                if shown := not_utf8(relative):
                    raise DataError(f"{root}: the file name {shown} is not UTF-8; rename it")
                found.append(relative)
    return sorted(found)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (a 20 GB file is never in memory at once;
    hashlib.file_digest would do it, but only from Python 3.11, and 3.10 is supported)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_sha256s_remembered(paths: Sequence[str], memo_dir: str | os.PathLike,
                             threads: int = DEFAULT_SCAN_THREADS) -> list[str]:  # fmt: skip
    """The sha256 of each of ``paths`` ("missing" for a file that cannot be read), hashed once and read
    back in later sessions while the files keep their stat signatures (size, mtime, ctime)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        digests, _ = remembered("images' sha256", "file_sha256", paths, memo_dir, lambda: list(pool.map(_sha256_or_missing, paths)),
                                threads)  # fmt: skip
    return digests


def _sha256_or_missing(path: str) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return "missing"


def hash_tree(root: str | os.PathLike, threads: int = DEFAULT_SCAN_THREADS) -> dict[str, str]:
    """``relative path -> sha256`` of every image under ``root`` (hashlib releases the GIL)."""
    root = Path(root)
    relative = image_files(root)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        digests = list(pool.map(lambda rel: _digest(root, rel), relative))
    return dict(zip(relative, digests))


def _digest(root: Path, relative: str) -> str:
    """The file's sha256; a dangling link or a file gone mid-walk is one line naming it, not a traceback."""
    try:
        return file_sha256(root / relative)
    except OSError as error:
        raise DataError(f"{root / relative}: cannot be read ({error.strerror or error}); fix or remove it") from None


def manifest_text(root: str | os.PathLike, digests: dict[str, str]) -> str:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(MANIFEST_FIELDS)
    for relative, digest in digests.items():
        writer.writerow([relative, (Path(root) / relative).stat().st_size, digest])
    return text.getvalue()


def read_manifest(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"dataset.manifest={path}: no manifest; write it with "
            "`python scripts/make_manifest.py --root-dir <dataset.root_dir>` or set dataset.verify_manifest=false"
        )
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != MANIFEST_FIELDS:
            raise DataError(f"{path}: not a manifest (header {reader.fieldnames}, expected {MANIFEST_FIELDS})")
        return {row["path"]: row["sha256"] for row in reader}


@dataclass
class ManifestDiff:
    changed: list[str]
    appeared: list[str]
    vanished: list[str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.appeared or self.vanished)

    def describe(self) -> str:
        parts = [
            f"{len(files)} {what} ({list_for_message(files, 5)})"
            for what, files in (("changed", self.changed), ("appeared", self.appeared), ("vanished", self.vanished))
            if files
        ]
        return "; ".join(parts)


def compare(expected: dict[str, str], actual: dict[str, str]) -> ManifestDiff:
    return ManifestDiff(
        changed=sorted(p for p in expected.keys() & actual.keys() if expected[p] != actual[p]),
        appeared=sorted(actual.keys() - expected.keys()),
        vanished=sorted(expected.keys() - actual.keys()),
    )


def verify_manifest(root: str | os.PathLike, manifest_path: str | os.PathLike) -> int:
    """Raise DataError naming what differs between ``root`` and its manifest; return the image count."""
    expected = read_manifest(manifest_path)
    diff = compare(expected, hash_tree(root))
    if diff:
        raise DataError(
            f"{root} no longer matches {manifest_path}: {diff.describe()}; restore the files, or rewrite the "
            "manifest with scripts/make_manifest.py if the change is intended"
        )
    return len(expected)
