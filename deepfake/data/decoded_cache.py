"""The decoded-image cache (``dataset.cache``): a split's images decoded once, framed as evaluation
frames them, in one uint8 memmap (N x S x S x 3) under ``data/cache/``.

Decoding a JPEG with Pillow costs more than scoring it with a small model, and every epoch decodes
every image again. The cache stores what evaluation's transform makes of each image before the
tensor conversion (shorter side resized to ``img_size``, centre crop), so reading it and normalising
gives the very tensors decoding the file would; training with ``dataset.cache=all`` applies its random
augmentations to the cached image instead of the full-size file.

A cache is keyed by the CSV's bytes, the image root, the path and stat signature (size, mtime
and ctime) of every image, ``img_size`` and the resize rule: change any of them and another cache is
built, never a stale one served (the original README warned that changing img_size invalidates cached
sets). It is built in ``<name>.partial/`` with its progress saved after every chunk, so a killed
build resumes where it stopped, and renamed into place only when complete; a file lock keeps two runs
or two ranks from building it twice. Damaged images are stored black (as the loader would serve them)
and recorded with their reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from deepfake.data.images import load_rgb
from deepfake.data.manifest import file_sha256
from deepfake.data.scan import DEFAULT_SCAN_THREADS, file_signatures
from deepfake.data.transforms import eval_framing
from deepfake.errors import DataError
from deepfake.tracking.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

CACHE_MODES = ("none", "eval", "all")
# The resize rule, part of every key: a change to evaluation's framing must change this string.
FRAMING = "resize-shorter-side-then-centre-crop"
_FORMAT = 2  # 2: image paths in the key
_IMAGES, _META, _PROGRESS = "images.npy", "meta.json", "progress.json"
_LOG_EVERY_S = 30.0


class DecodedImages:
    """A finished cache: ``image(i)`` and ``reason(i)`` for item ``i`` of the split it was built from.

    The memmap opens on first use in each process, so the object pickles into spawned workers and
    forked ones map the file themselves (its pages live in the OS page cache, shared by all).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        meta = json.loads((self.directory / _META).read_text())
        self.count, self.img_size = int(meta["count"]), int(meta["img_size"])
        self.damaged = {int(index): reason for index, reason in meta["damaged"].items()}
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.directory / _IMAGES, mmap_mode="r")
        return self._array

    def image(self, index: int) -> Image.Image:
        # A copy: a PIL image over the map would keep the file open and its pages read-only.
        return Image.fromarray(np.array(self.array[index]))

    def reason(self, index: int) -> str | None:
        return self.damaged.get(index)

    @property
    def nbytes(self) -> int:
        return self.count * self.img_size * self.img_size * 3

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def cache_key(csv_path: str | os.PathLike, root_dir: str | os.PathLike, paths, img_size: int, interpolation: str,
              threads: int = DEFAULT_SCAN_THREADS) -> str:  # fmt: skip
    """What the cached pixels depend on: the CSV, the root, every image's path and stat signature, the framing."""
    digest = hashlib.sha256(Path(csv_path).read_bytes())
    settings = {"root": os.path.abspath(root_dir), "img_size": int(img_size), "interpolation": interpolation,
                "framing": FRAMING, "format": _FORMAT}  # fmt: skip
    digest.update(json.dumps(settings, sort_keys=True).encode())
    # A dataset regenerated or re-downloaded in place under the same CSV changes its files' signatures
    # (an old mtime put back leaves the ctime changed), so it is not served stale. The paths count too: the same CSV read through another
    # path_column lists other files, whose sizes and times (one archive's) may all be the same.
    for path, signature in zip(paths, file_signatures(paths, threads)):
        digest.update(f"{path}\n".encode() + signature)
    return digest.hexdigest()


def _sources(csv_path, paths) -> dict:
    """What tells a cache that another replaces (the same CSV's bytes and image list, files changed since)
    from one that lives beside it (the same CSV read through another path column)."""
    listed = hashlib.sha256("".join(f"{path}\n" for path in paths).encode()).hexdigest()
    return {"csv_sha256": file_sha256(csv_path), "paths_sha256": listed}


def open_cache(paths, *, csv_path: str | os.PathLike, root_dir: str | os.PathLike, img_size: int, interpolation: str,
               fallback_size: int, cache_dir: str | os.PathLike, chunk: int = 512,
               threads: int = DEFAULT_SCAN_THREADS) -> DecodedImages:  # fmt: skip
    """The cache of ``paths`` (the split's resolved image paths, in CSV order), built first if needed."""
    key = cache_key(csv_path, root_dir, paths, img_size, interpolation, threads)
    prefix = f"{Path(csv_path).stem}-{img_size}px-"  # the caches of this CSV's name and size
    final = Path(cache_dir) / f"{prefix}{key[:16]}"
    if not (final / _META).is_file():
        lock = _build_lock(final)
        try:
            if not (final / _META).is_file():  # another run or rank may have built it meanwhile
                builder = _Builder(paths, key, img_size, interpolation, fallback_size, threads)
                builder.build(final, csv_path=csv_path, root_dir=root_dir, chunk=chunk,
                              sources=_sources(csv_path, paths))  # fmt: skip
                _remove_superseded(final, prefix)
        finally:
            lock.release()
    cache = DecodedImages(final)
    if cache.count != len(paths):  # the key covers the CSV, so only a hand-edited cache gets here
        raise DataError(f"{final}: holds {cache.count} images for {len(paths)} rows of {csv_path}; delete it")
    return cache


def _build_lock(final: Path) -> FileLock:
    """The held lock that keeps two runs or ranks from building ``final`` twice; an unusable cache
    folder (a file, a path that cannot be made, no write permission) is the user's to fix."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(_build_lock_path(final))
        lock.acquire()
    except OSError as err:
        reason = "a file is in the way" if isinstance(err, FileExistsError | NotADirectoryError) else err.strerror
        raise DataError(f"the decoded-image cache cannot be kept in {final.parent} ({reason}); set "
                        "dataset.cache_dir to a writable folder, or dataset.cache=none") from None  # fmt: skip
    return lock


def _build_lock_path(final: Path) -> str:
    """The lock a build of ``final`` holds from start to end: also how a live build is told apart."""
    return f"{final}.lock"


def _remove_superseded(final: Path, prefix: str) -> None:
    """Delete the caches of the same CSV, root, size (named ``prefix...``) and resize rule that ``final``
    replaces: their files have changed since, or the CSV has, so their key can no longer come up, and at
    the Kaggle set's size each is ~20 GB. That holds for a partial build too (its memmap is full-size
    from the start), unless a live process is building it. Caches of other sizes, CSVs, roots or resize
    rules stay, and so does one of the same CSV read through another path column (a run beside this one
    may be reading it); so does a folder that does not say what it was built from."""
    new = json.loads((final / _META).read_text())
    for other in final.parent.glob(f"{prefix}*"):
        if other == final or not other.is_dir():
            continue
        partial = other.name.endswith(".partial")
        try:
            meta = json.loads((other / (_PROGRESS if partial else _META)).read_text())
        except (OSError, ValueError):
            continue
        if not _replaced_by(meta, new):
            continue
        if partial:
            _remove_abandoned(other)
        else:
            shutil.rmtree(other, ignore_errors=True)
            log.info("removed the superseded cache %s (built from files or a CSV that have changed since)", other)


def _replaced_by(meta: dict, new: dict) -> bool:
    """Whether the cache described by ``meta`` is one the cache ``new`` supersedes."""
    if any(meta.get(field) != new[field] for field in ("csv", "root_dir")):
        return False
    return meta.get("format") != _FORMAT or (
        (meta.get("interpolation"), meta.get("framing")) == (new["interpolation"], new["framing"])
        and (meta.get("csv_sha256") != new["csv_sha256"] or meta.get("paths_sha256") == new["paths_sha256"])
    )  # fmt: skip


def _remove_abandoned(partial: Path) -> None:
    """Delete a superseded partial build, unless its build lock is held: a live process is building it."""
    try:
        with FileLock(_build_lock_path(partial.with_name(partial.name.removesuffix(".partial"))), timeout=0):
            shutil.rmtree(partial, ignore_errors=True)
    except Timeout:
        log.info("kept the superseded partial cache %s: a live process is building it", partial)
        return
    log.info("removed the superseded partial cache %s (a build stopped before the files or CSV changed)", partial)


def _size(nbytes: int) -> str:
    """Bytes as a reader compares them: GiB for a Kaggle-sized cache, MiB or KiB for a small one."""
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB")):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


class _Builder:
    def __init__(self, paths, key: str, img_size: int, interpolation: str, fallback_size: int, threads: int) -> None:
        self.paths, self.key, self.img_size, self.fallback_size = paths, key, int(img_size), int(fallback_size)
        self.interpolation, self.threads = interpolation, max(1, threads)
        self.framing = eval_framing(self.img_size, interpolation)

    def build(self, final: Path, *, csv_path, root_dir, chunk: int, sources: dict) -> None:
        partial = final.with_name(final.name + ".partial")
        # What the cache was built from, in the partial build's progress too: a superseded one is removed.
        origin = {"interpolation": self.interpolation, "framing": FRAMING, "format": _FORMAT,
                  "csv": os.path.abspath(csv_path), "root_dir": os.path.abspath(root_dir), **sources}  # fmt: skip
        images, state = self._open(partial, origin)
        count, started = len(self.paths), time.perf_counter()
        done_before, last_log = state["done"], started
        log.info("decoding %d images of %s into the cache %s (%s, once)%s", count, csv_path, final,
                 _size(images.nbytes), f"; resuming at image {done_before}" if done_before else "")  # fmt: skip
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for start in range(state["done"], count, chunk):
                stop = min(count, start + chunk)
                for index, (pixels, reason) in enumerate(pool.map(self._decode, self.paths[start:stop]), start):
                    images[index] = pixels
                    if reason is not None:
                        state["damaged"][str(index)] = reason
                images.flush()  # pixels on disk before the progress that counts them
                state["done"] = stop
                atomic_write_text(partial / _PROGRESS, json.dumps(state))
                if time.perf_counter() - last_log > _LOG_EVERY_S:
                    last_log = time.perf_counter()
                    log.info("cache %s: %d of %d images decoded", final.name, stop, count)
        del images
        meta = {"count": count, "img_size": self.img_size, **origin, "key": self.key, "damaged": state["damaged"],
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        atomic_write_text(partial / _META, json.dumps(meta, indent=1) + "\n")
        (partial / _PROGRESS).unlink()
        if final.exists():  # a directory without meta.json: never a finished cache
            shutil.rmtree(final)
        os.replace(partial, final)
        log.info("cached %d images (%d damaged) in %.1f s", count - done_before, len(state["damaged"]),
                 time.perf_counter() - started)  # fmt: skip

    def _open(self, partial: Path, origin: dict) -> tuple[np.ndarray, dict]:
        """The partial cache's memmap and progress: resumed when it is this key's, else started afresh."""
        shape = (len(self.paths), self.img_size, self.img_size, 3)
        try:
            state = json.loads((partial / _PROGRESS).read_text())
            if state.get("key") == self.key:
                images = np.lib.format.open_memmap(partial / _IMAGES, mode="r+")
                if images.shape == shape and images.dtype == np.uint8:
                    return images, state
        except (OSError, ValueError):
            pass  # no partial build, or one too damaged to trust: start again
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        needed, free = int(np.prod(shape)), shutil.disk_usage(partial).free
        if needed > free:
            shutil.rmtree(partial, ignore_errors=True)
            raise DataError(f"the decoded-image cache needs {_size(needed)} but {partial.parent} has "
                            f"{_size(free)} free; free space, move dataset.cache_dir or set dataset.cache=none")  # fmt: skip
        state = {"key": self.key, "done": 0, "damaged": {}, **origin}
        atomic_write_text(partial / _PROGRESS, json.dumps(state))
        return np.lib.format.open_memmap(partial / _IMAGES, mode="w+", dtype=np.uint8, shape=shape), state

    def _decode(self, path: str) -> tuple[np.ndarray, str | None]:
        image, reason = load_rgb(path, self.fallback_size)
        return np.asarray(self.framing(image)), reason
