"""Checkpoints written behind the training loop.

``CheckpointWriter.save`` copies every tensor of a checkpoint into staging buffers (pinned host
memory for CUDA tensors; the buffers are kept and reused by the next save to the same file), then
one background thread writes the copy with :func:`~deepfake.tracking.checkpoint.atomic_save`
(temp + fsync + ``os.replace``) while the loop goes on. The copy is what makes that safe: the
optimizer changes the live tensors in place at the next step. The loop waits for the copy (a few
tens of ms for CvT-13's last.pth, 236 MB with AdamW's moments), not for the write and its fsync
(~0.5 s on a 2-core CPU). Where the step keeps every core busy the write still takes its CPU time
from it (task=bench measures what a save adds to the steps beside it); on a GPU machine the cores
are free and the GPU never waits for the disk.

The promises of a synchronous save hold: files are written in the order they were saved (last.pth
before best.pth), each atomically, so a kill leaves the previous version; ``wait()`` returns once
everything saved is on disk, and raises the error of a write that failed (a full disk:
:class:`~deepfake.errors.CheckpointError`, the previous file kept); after a failed write the later
ones are not written, as a synchronous save would have raised before them. With ``background=False`` every
``save`` writes before it returns.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from deepfake.errors import CheckpointError
from deepfake.tracking.checkpoint import atomic_save


class CheckpointWriter:
    """Atomic checkpoint writes on one background thread, from staged copies (see the module doc)."""

    def __init__(self, background: bool = True) -> None:
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer") if background else None
        )
        self._pending: dict[Path, Future] = {}  # per file: its write in flight, whose buffers it reads
        self._buffers: dict[Path, dict[tuple, torch.Tensor]] = {}
        self._failed: BaseException | None = None  # the first write that failed, set on the writer thread

    def save(self, obj: Any, path: str | os.PathLike[str]) -> None:
        """Write ``obj`` to ``path`` atomically: in the background, from a copy taken now."""
        path = Path(path)
        if self._executor is None:
            atomic_save(obj, path)
            return
        previous = self._pending.pop(path, None)
        if previous is not None:  # its buffers are about to be refilled; a failed write is raised here
            previous.result()
        devices: set[torch.device] = set()
        staged = _stage(obj, self._buffers.setdefault(path, {}), (), devices)
        for device in devices:  # the device-to-host copies were queued without blocking, on each device
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        self._pending[path] = self._executor.submit(self._write, staged, path)

    def _write(self, staged: Any, path: Path) -> None:
        """On the writer thread, in the order saved. After a failed write nothing more is written: a
        best.pth of epoch N must not reach the disk when the last.pth that names it the best did not."""
        if self._failed is not None:
            raise CheckpointError(f"{path} not written: an earlier checkpoint write failed ({self._failed})")
        try:
            atomic_save(staged, path)
        except BaseException as error:
            self._failed = error
            raise

    def check(self) -> None:
        """Raise the error of a write that has already failed, without waiting for any other: the
        trainer asks every log interval, so a full disk ends the run within a few batches."""
        for path, future in list(self._pending.items()):
            if future.done() and future.exception() is not None:
                del self._pending[path]
                raise future.exception()

    def wait(self) -> None:
        """Block until every saved checkpoint is on disk; raise the first failed write's error."""
        errors = self._finish()
        if errors:
            raise errors[0]

    def drain(self) -> None:
        """Block until the writes in flight end, raising nothing: for when another error is already on
        its way out, which a failed write must not replace (the file in question keeps its previous version)."""
        self._finish()

    def _finish(self) -> list[BaseException]:
        """Wait for every write in flight; the errors of those that failed, in the order saved."""
        pending, self._pending = list(self._pending.values()), {}
        return [error for error in (future.exception() for future in pending) if error is not None]

    def close(self) -> None:
        """Finish the writes in flight (raising a failure) and stop the thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)


def _stage(obj: Any, buffers: dict[tuple, torch.Tensor], key: tuple, devices: set[torch.device]) -> Any:
    """``obj`` with each tensor copied into ``buffers[key]`` (allocated when its shape, dtype or
    strides changed) and every other leaf deep-copied: nothing in the copy is shared with the live
    objects the loop goes on changing. ``devices`` collects the devices copied from."""
    if isinstance(obj, torch.Tensor):
        source = obj.detach()
        devices.add(source.device)
        buffer = buffers.get(key)
        if buffer is None or (buffer.shape, buffer.dtype, buffer.stride()) != (
            source.shape,
            source.dtype,
            source.stride(),
        ):
            buffer = torch.empty_like(source, device="cpu", pin_memory=source.is_cuda)
            buffers[key] = buffer
        buffer.copy_(source, non_blocking=source.is_cuda)
        return buffer
    if isinstance(obj, dict):
        return {name: _stage(value, buffers, (*key, name), devices) for name, value in obj.items()}
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(_stage(value, buffers, (*key, index), devices) for index, value in enumerate(obj))
    return copy.deepcopy(obj)
