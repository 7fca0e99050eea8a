"""The registered runs as task=prune and task=archive judge them: finished or not, when, and in use."""

from __future__ import annotations

from pathlib import Path

from deepfake.errors import ConfigError, RunDirLocked
from deepfake.tasks.jobs import read_status
from deepfake.tracking.retention import RunState, parse_time
from deepfake.tracking.run_lock import refuse_if_held


def run_states(entries: list[dict], *, stale_after_s: float) -> list[RunState]:
    """One state per entry whose run dir is still on disk (an archived or deleted run has nothing to prune)."""
    states = []
    for entry in entries:
        run_dir = Path(entry.get("run_dir") or "")
        if not entry.get("run_dir") or not run_dir.is_dir():
            continue
        status = read_status(run_dir) or {}
        # Registering is a training's last step, and a finished run is never relaunched (resume refuses
        # it), so the registry's word stands: status.json of a run killed between its registration and
        # its exit still says "running", and resume already called that run finished.
        finished = entry.get("status") == "finished"
        if finished:
            times = [entry.get("ended_at") or status.get("ended_at")]
        else:
            times = [record.get(key) for record in (entry, status) for key in ("started_at", "ended_at")]
        known = [when for when in map(parse_time, times) if when is not None]
        last = run_dir / "last.pth"
        states.append(
            RunState(
                run_name=entry["run_name"],
                run_dir=run_dir,
                status="finished" if finished else status.get("status") or entry.get("status") or "unknown",
                last_active=max(known) if known else None,
                last_bytes=last.stat().st_size if last.is_file() else None,
                locked=_held(run_dir, stale_after_s),
            )
        )
    return states


def _held(run_dir: Path, stale_after_s: float) -> bool:
    try:
        refuse_if_held(run_dir, stale_after_s)
    except RunDirLocked:
        return True
    return False


def number_setting(value, key: str, kind: type | tuple[type, ...]):
    """A retention setting (prune.keep_days, archive.older_than_days, ...): a number >= 0, or None (off)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or value < 0):
        raise ConfigError(f"{key}={value} is not a number >= 0; set one, or null to turn it off")
    return value
