"""One writer per run dir: ``run.lock`` names its holder, and a dead holder's lock is taken over.

The lock file appears whole and only once: its JSON record (pid, host, boot id, start time, command
line) is written to a temp that is then hard-linked to ``run.lock``; ``os.link`` fails when the name
exists, atomically, on local disks and NFS alike. While the lock is held a thread touches the file
every ``stale_after_s / 10`` seconds: the heartbeat. A lock is stale when its holder is gone: on this
machine, its pid no longer runs (or the machine has rebooted since); from another machine or another
container's PID namespace, whose processes cannot be seen, its heartbeat is older than
``stale_after_s`` (shared filesystems). A stale
lock is taken over with one warning; a live one refuses the newcomer (:class:`RunDirLocked`).

Why not ``filelock.FileLock`` (flock) as the lock: the kernel releases an flock with its process,
but an flock says nothing about who holds it, is missing on some shared filesystems (Lustre without
``-o flock``) and cannot be aged out when a node dies with it. A short FileLock still serialises
takeovers, so two newcomers never both replace one stale lock (the second removing the first's).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from deepfake.errors import RunDirLocked
from deepfake.tracking.checkpoint import HOST, process_is_alive, temp_path

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
DEFAULT_STALE_AFTER_S = 600.0
_SHOWN_COMMAND_CHARS = 200


def _boot_id() -> str | None:
    """Linux's id of this boot: a pid recorded before a reboot says nothing about today's processes."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """Linux's id of this process's PID namespace: containers on one host (same hostname, e.g. with
    host networking) each number their processes apart, so a pid says nothing across them."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux), or None when /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the command name before ")" may hold spaces


@dataclass(frozen=True)
class Holder:
    """Who holds a run dir's lock: what ``run.lock`` records."""

    pid: int
    host: str
    boot_id: str | None
    pid_start: int | None  # with the boot id, tells the holder from a later process given the same pid
    started_at: str
    command: str
    pid_ns: str | None = None  # the PID namespace its pid is numbered in (None: not recorded)

    @classmethod
    def this_process(cls) -> Holder:
        started = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
        command = shlex.join([Path(sys.executable).name, *sys.argv])
        return cls(os.getpid(), HOST, _boot_id(), _process_start(os.getpid()), started, command, _pid_namespace())

    def describe(self) -> str:
        command = self.command
        if len(command) > _SHOWN_COMMAND_CHARS:
            command = command[:_SHOWN_COMMAND_CHARS] + "..."
        return f"PID {self.pid} on {self.host}, started {self.started_at} ({command})"


@dataclass(frozen=True)
class _Seen:
    """One reading of a lock file: its holder (None when the record cannot be read) and identity."""

    holder: Holder | None
    raw: bytes
    inode: int
    heartbeat_age_s: float


def _look(path: Path) -> _Seen | None:
    """The lock file as it is now, or None when there is none."""
    try:
        with open(path, "rb") as handle:
            raw, stat = handle.read(), os.fstat(handle.fileno())
    except FileNotFoundError:
        return None
    try:
        holder = Holder(**json.loads(raw))
    except (ValueError, TypeError):
        holder = None
    if holder is not None and not _well_typed(holder):  # hand-edited: judged by its heartbeat, as unreadable
        holder = None
    return _Seen(holder, raw, stat.st_ino, max(0.0, time.time() - stat.st_mtime))


def _well_typed(holder: Holder) -> bool:
    """A record whose fields have the types this module wrote: a pid of "123" or null was a TypeError
    traceback in every command that met the lock (resume=, prune, archive)."""

    def number(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def text(value) -> bool:
        return isinstance(value, str)

    return (number(holder.pid) and text(holder.host) and text(holder.started_at) and text(holder.command)
            and all(value is None or text(value) for value in (holder.boot_id, holder.pid_ns))
            and (holder.pid_start is None or number(holder.pid_start)))  # fmt: skip


def _stale_reason(seen: _Seen, stale_after_s: float) -> str | None:
    """Why the lock's holder is gone, or None while it may still be writing."""
    holder = seen.holder
    if holder is not None and holder.host == HOST and holder.pid_ns in (None, _pid_namespace()):
        if holder.boot_id != _boot_id():
            return "this machine has rebooted since"
        if not process_is_alive(HOST, holder.pid):
            return f"PID {holder.pid} is no longer running"
        if holder.pid_start is not None and _process_start(holder.pid) not in (None, holder.pid_start):
            return f"PID {holder.pid} now belongs to another process"
        return None
    # Another machine's process, or another container's (or one whose record cannot be read): only
    # its heartbeat tells.
    if seen.heartbeat_age_s > stale_after_s:
        return f"no heartbeat for {seen.heartbeat_age_s:.0f} s (stale after {stale_after_s:g} s)"
    return None


def _refusal(run_dir: Path, seen: _Seen) -> RunDirLocked:
    path = run_dir / LOCK_NAME
    if seen.holder is None:
        who = f"a process whose record in {path} cannot be read (heartbeat {seen.heartbeat_age_s:.0f} s ago)"
    else:
        who = seen.holder.describe()
    return RunDirLocked(
        f"{run_dir} is being written by {who}; wait for it to end, or stop it (SIGTERM saves last.pth) and "
        f"resume; if that process is gone, delete {path}"
    )


def refuse_if_held(run_dir: str | os.PathLike[str], stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
    """Raise :class:`RunDirLocked` when a live process holds ``run_dir``'s lock; a free or stale lock passes."""
    run_dir = Path(run_dir)
    seen = _look(run_dir / LOCK_NAME)
    if seen is not None and _stale_reason(seen, stale_after_s) is None:
        raise _refusal(run_dir, seen)


class RunDirLock:
    """``with RunDirLock(run_dir):`` this process is the run dir's only writer until the block ends.

    ``wait_s``: how long to wait for a live holder to end or go stale before refusing (0: refuse at once).
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], *, stale_after_s: float = DEFAULT_STALE_AFTER_S, wait_s: float = 0.0
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_after_s = float(stale_after_s)
        self.wait_s = float(wait_s)
        self._beat_s = max(0.05, self.stale_after_s / 10)
        self._held: tuple[bytes, int] | None = None  # our lock file's record and inode while we hold it
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = (json.dumps(asdict(Holder.this_process())) + "\n").encode()
        deadline = time.monotonic() + self.wait_s
        while not self._create(record):
            seen = _look(self.path)
            if seen is None:
                continue  # released since: try again
            reason = _stale_reason(seen, self.stale_after_s)
            if reason is not None:
                if self._take_over(seen, record):
                    who = seen.holder.describe() if seen.holder else "an unreadable record"
                    log.warning("took over the stale lock of %s from %s: %s", self.run_dir, who, reason)
                    break
                continue  # it changed hands meanwhile: look again
            if time.monotonic() >= deadline:
                raise _refusal(self.run_dir, seen)
            time.sleep(min(self._beat_s, 1.0))
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        if self._held is None:
            return
        self._stop.set()
        self._heartbeat.join()
        if self._still_ours():  # a lock taken over from us (we were suspended too long) is the new holder's
            self.path.unlink(missing_ok=True)
        self._held = None

    def _create(self, record: bytes) -> bool:
        """Make ``run.lock`` ours if no file has that name; the record is whole the moment it appears."""
        temp = temp_path(self.path)  # a killed process's temp is cleaned up like any other
        try:
            with open(temp, "xb") as handle:
                handle.write(record)
                handle.flush()
                os.fsync(handle.fileno())
                inode = os.fstat(handle.fileno()).st_ino
            os.link(temp, self.path)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        self._held = (record, inode)
        return True

    def _take_over(self, stale: _Seen, record: bytes) -> bool:
        with FileLock(self.run_dir / f".{LOCK_NAME}.takeover"):
            current = _look(self.path)
            if current is None or (current.raw, current.inode) != (stale.raw, stale.inode):
                return False
            self.path.unlink()
            return self._create(record)

    def _still_ours(self) -> bool:
        # The record too: a new lock file may get the inode number of the one it replaced.
        seen = _look(self.path)
        return seen is not None and (seen.raw, seen.inode) == self._held

    def _beat(self) -> None:
        while not self._stop.wait(self._beat_s):
            try:
                if not self._still_ours():
                    raise FileNotFoundError(self.path)
                os.utime(self.path)
            except OSError:  # taken over, deleted, or the filesystem went away
                log.error("the lock of %s was taken from this process; it is no longer the run's only writer",
                          self.run_dir)  # fmt: skip
                return
