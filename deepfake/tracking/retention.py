"""Which runs' ``last.pth`` to keep: the retention rules of task=prune, as plain data in and out.

``last.pth`` is the resume state of a run (model, optimizer, scheduler, scaler, RNG): once a run has
finished it only matters for continuing it, and it is as large as ``best.pth`` or larger. The rules
follow timm's checkpoint saver and lightning's ``save_top_k``: a finished run keeps its ``last.pth``
while it is among the newest ``keep_last`` finished runs **or** ended less than ``keep_days`` ago;
``None`` turns a rule off (it then keeps nothing). Some runs are never candidates, whatever their
age: the global best's run, a run whose lock a live process holds, and a run that has not finished
(it may be resumed). Ages come from the times the registry and status.json record, never from file
modification times, which copies, restores and ``touch`` change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class RunState:
    """One registered run as the retention rules see it."""

    run_name: str
    run_dir: Path
    status: str  # "finished" when the registry says so; else how status.json (or the registry) says it ended
    last_active: datetime | None  # finished: when it ended; otherwise its latest recorded time
    last_bytes: int | None  # size of its last.pth, None when it has none
    locked: bool  # a live process holds its run.lock


@dataclass(frozen=True)
class PruneDecision:
    run: RunState
    prune: bool
    reason: str


def parse_time(text: str | None) -> datetime | None:
    """An ISO time as the registry writes it; one without an offset is taken as local time."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone()
    except (TypeError, ValueError):
        return None


def age_days(when: datetime, now: datetime) -> float:
    return (now - when).total_seconds() / SECONDS_PER_DAY


def plan_prune(
    runs: list[RunState], *, best_run: str | None, now: datetime, keep_days: float | None, keep_last: int | None
) -> list[PruneDecision]:
    """A decision for every run that has a ``last.pth``, newest first."""
    with_last = [run for run in runs if run.last_bytes is not None]
    with_last.sort(key=lambda run: run.last_active.timestamp() if run.last_active else float("-inf"), reverse=True)
    # keep_last counts the finished runs that still have a last.pth, the best's included: pruning
    # again the next day keeps the same ones.
    ranked = [run for run in with_last if run.status == "finished" and run.last_active is not None]
    rank = {run.run_name: index + 1 for index, run in enumerate(ranked)}
    return [_decide(run, best_run, now, keep_days, keep_last, rank.get(run.run_name)) for run in with_last]


def _decide(
    run: RunState, best_run: str | None, now: datetime, keep_days: float | None, keep_last: int | None, rank: int | None
) -> PruneDecision:
    age = age_days(run.last_active, now) if run.last_active else None
    ago = f"{age:.1f} days ago" if age is not None else "at an unrecorded time"
    if run.locked:
        return PruneDecision(run, False, "being written: a live process holds its run.lock")
    if run.run_name == best_run:
        return PruneDecision(run, False, "the global best's run")
    if run.status != "finished":
        if keep_days is None or age is None or age < keep_days:
            return PruneDecision(run, False, f"not finished ({run.status}), active {ago}: it may be resumed")
        return PruneDecision(run, False, f"not finished ({run.status}), last active {ago}: only finished runs are "
                                         "pruned; resume it or delete its run dir yourself")  # fmt: skip
    if age is None:
        return PruneDecision(run, False, "finished, but no end time is recorded")
    if keep_last is not None and rank <= keep_last:
        return PruneDecision(run, False, f"#{rank} of the newest finished runs (keep_last={keep_last})")
    if keep_days is not None and age < keep_days:
        return PruneDecision(run, False, f"ended {ago} (keep_days={keep_days:g})")
    rules = [f"keep_days={keep_days:g}" if keep_days is not None else None,
             f"#{rank}, keep_last={keep_last}" if keep_last is not None else None]  # fmt: skip
    return PruneDecision(run, True, f"ended {ago} ({'; '.join(r for r in rules if r) or 'no rule keeps it'})")
