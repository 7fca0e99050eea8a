"""A pass over every image of a split before training: damaged files are found in seconds, not hours in.

The loader already substitutes a damaged image by a black one, which is right for a handful of
scraped files; a dataset in which a large share is broken (a failed unzip, a wrong root) should
instead stop before the first epoch, with the files named.

A scan's answer is remembered (:func:`find_damaged_remembered`) under the files' names and stat
signatures (:func:`file_signatures`): the next session over the same files reads it back instead of
decoding every image again (3000 JPEGs of 256 px on 2 cores: 0.82 s to decode, 0.06 s to stat them
and read the answer back).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import PIL.features

from deepfake.data.images import probe_image
from deepfake.errors import CheckpointError
from deepfake.tracking.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

# Decoding releases the GIL and reading waits on the disk, so threads overlap well beyond the core
# count (a network filesystem benefits most).
DEFAULT_SCAN_THREADS = min(32, 4 * (os.cpu_count() or 1))
# Part of every remembered scan's key: a change to what counts as damaged (probe_image) bumps it.
_SCAN_FORMAT = 1


def find_damaged(paths: Sequence[str], threads: int = DEFAULT_SCAN_THREADS) -> list[tuple[str, str]]:
    """``(path, reason)`` for every image of ``paths`` that cannot be decoded, in ``paths`` order."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        reasons = list(pool.map(probe_image, paths))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


def find_damaged_remembered(
    paths: Sequence[str], memo_dir: str | os.PathLike, threads: int = DEFAULT_SCAN_THREADS
) -> tuple[list[tuple[str, str]], bool]:
    """``(find_damaged(paths), remembered)``: the answer of an earlier scan of the same files (same
    names and stat signatures, read by the same Pillow and libjpeg: another decoder may
    judge a file differently) when ``memo_dir`` holds one, else a scan, then remembered."""
    decoder = f"Pillow {PIL.__version__}, libjpeg {PIL.features.version('jpg')}"
    answer, known = remembered("image scan's answer", f"scan format {_SCAN_FORMAT}\n{decoder}", paths, memo_dir,
                               lambda: find_damaged(paths, threads), threads)  # fmt: skip
    return [(path, reason) for path, reason in answer], known


def remembered(name: str, version: str, paths: Sequence[str], memo_dir: str | os.PathLike,
               compute: Callable[[], Any], threads: int = DEFAULT_SCAN_THREADS) -> tuple[Any, bool]:  # fmt: skip
    """``(answer, remembered)``: ``compute()``'s JSON answer about the files ``paths`` (the ``name``d
    answer, worked out by code ``version``), read back from ``memo_dir`` when an earlier session worked
    it out over the same names and stat signatures, else computed and kept for the next one."""
    digest = hashlib.sha256(f"{name}\n{version}\n".encode())
    for path, signature in zip(paths, file_signatures(paths, threads)):
        digest.update(f"{path}\n".encode() + signature)
    memo = Path(memo_dir) / f"{digest.hexdigest()[:32]}.json"
    try:
        return json.loads(memo.read_text(encoding="utf-8"))["answer"], True
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: compute again
        pass
    answer = compute()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps({"images": len(paths), "answer": answer}) + "\n")
    except (OSError, CheckpointError) as error:  # a read-only or full disk: the answer stands
        log.warning("could not keep the %s in %s (%s); the next session works it out again", name, memo_dir,
                    getattr(error, "strerror", None) or error)  # fmt: skip
    return answer, False


def file_signatures(paths: Sequence[str], threads: int = DEFAULT_SCAN_THREADS) -> Iterator[bytes]:
    """Each file's ``size:mtime_ns:ctime_ns`` line (``missing`` when it cannot be read), in ``paths``
    order: what says a file has changed without reading it (hashing 20 GB at every start would cost
    more than decoding it). Size and mtime alone miss a file rewritten, or replaced, with its old mtime
    put back (``cp -p``, ``rsync -a``, ``tar x``): ``utime`` cannot set the ctime back. The price: a
    chmod or a new hard link also counts as a change. (Not the inode: some network and FUSE mounts
    renumber files at every mount, which would rebuild a 20 GB cache each session.)"""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        yield from pool.map(_file_signature, paths)


def _file_signature(path: str) -> bytes:
    try:
        stat = os.stat(path)
    except OSError:
        return b"missing\n"
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}\n".encode()


def not_utf8(name: str) -> str | None:
    """``name`` as a message shows it (``caf\\xe9.jpg``) when it is not UTF-8, which CSVs and reports
    must be (Linux hands such a name to Python with surrogates); None for a UTF-8 name."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return None


def list_for_message(items: Sequence[str], limit: int = 10) -> str:
    """``a, b, c (+N more)``: long lists stay on one readable line."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} (+{len(items) - limit} more)"
