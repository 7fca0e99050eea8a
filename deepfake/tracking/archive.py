"""Run dirs packed into one archive that is checked against its sources before it takes its name.

The archive is written to a temp beside its final name, read back in full and compared member by
member (type, size, sha256 of every file as it was packed) and only then renamed into place
(:func:`deepfake.tracking.checkpoint.atomic_path`): whatever has the final name is whole, so the
caller may delete the sources once this returns. ``.tar.gz`` needs nothing beyond the standard
library; ``.tar.zst`` (faster, smaller) needs the ``zstandard`` package, since Python's tarfile
knows no zstd before 3.14: zstandard's stream writer and reader wrap a tarfile stream.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import IO

from deepfake.errors import ArchiveError
from deepfake.tracking.checkpoint import atomic_path, is_temp
from deepfake.tracking.run_lock import LOCK_NAME

SUFFIXES = {"gz": ".tar.gz", "zst": ".tar.zst"}
# Who was writing a run dir, and half-written files: not part of what a run left behind.
_NOT_PACKED = {LOCK_NAME, f".{LOCK_NAME}.takeover"}
_CHUNK = 1 << 20

# member name -> ("file", size, sha256) | ("dir",) | ("link", target)
Listing = dict[str, tuple]


def available_formats() -> list[str]:
    return [fmt for fmt in SUFFIXES if fmt != "zst" or find_spec("zstandard") is not None]


def write_archive(path: str | os.PathLike[str], run_dirs: dict[str, Path], fmt: str) -> Listing:
    """Pack each run dir under its name (``run_dirs``: member prefix -> dir) into ``path``; return
    what it holds. Raises :class:`ArchiveError` (and leaves no file) when the archive read back differs."""
    path = Path(path)
    with atomic_path(path) as temp:
        with _writer(temp, fmt) as tar:
            packed = {}
            for prefix, run_dir in run_dirs.items():
                packed.update(_pack(tar, run_dir, prefix))
        found = _listing(temp, fmt)
        if found != packed:
            differ = sorted(set(found.items()) ^ set(packed.items()))
            raise ArchiveError(
                f"{path} read back differs from the run dirs packed into it (first: {differ[0][0]}); "
                "nothing was removed: check the disk and archive again"
            )
    return packed


def _pack(tar: tarfile.TarFile, run_dir: Path, prefix: str) -> Listing:
    packed: Listing = {}
    for folder, dirs, files in os.walk(run_dir):  # symlinks are packed as links, never followed
        dirs.sort()
        for name in [*dirs, *sorted(files)]:
            if name in _NOT_PACKED or is_temp(name):
                continue
            source = Path(folder, name)
            member = f"{prefix}/{source.relative_to(run_dir).as_posix()}"
            info = tar.gettarinfo(source, arcname=member)
            if info is None:
                continue  # a socket: tar has no type for it, and it holds no data
            if info.isfile():
                with open(source, "rb") as handle:
                    hashing = _Hashing(handle)
                    tar.addfile(info, hashing)
                packed[member] = ("file", info.size, hashing.digest.hexdigest())
            else:
                tar.addfile(info)
                packed[member] = _entry(info)
    return packed


def _entry(info: tarfile.TarInfo) -> tuple:
    if info.isdir():
        return ("dir",)
    if info.issym() or info.islnk():
        return ("link", info.linkname)
    return ("other", info.type)


def _listing(path: Path, fmt: str) -> Listing:
    """Every member of the archive at ``path``, every file's bytes read and hashed."""
    found: Listing = {}
    with _reader(path, fmt) as tar:
        for info in tar:
            if info.isfile():
                digest = hashlib.sha256()
                data = tar.extractfile(info)
                while chunk := data.read(_CHUNK):
                    digest.update(chunk)
                found[info.name] = ("file", info.size, digest.hexdigest())
            else:
                found[info.name] = _entry(info)
    return found


class _Hashing:
    """A file whose bytes are hashed as tarfile reads them: the sources are read once."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


@contextmanager
def _writer(path: Path, fmt: str) -> Iterator[tarfile.TarFile]:
    if fmt == "gz":
        with tarfile.open(path, "x:gz") as tar:
            yield tar
        return
    import zstandard

    with (
        open(path, "xb") as raw,
        zstandard.ZstdCompressor(threads=-1).stream_writer(raw) as stream,
        tarfile.open(fileobj=stream, mode="w|") as tar,
    ):
        yield tar


@contextmanager
def _reader(path: Path, fmt: str) -> Iterator[tarfile.TarFile]:
    if fmt == "gz":
        with tarfile.open(path, "r|gz") as tar:
            yield tar
        return
    import zstandard

    with (
        open(path, "rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        yield tar
