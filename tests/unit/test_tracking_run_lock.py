"""The run dir's lock: its holder record, the heartbeat, live holders refused, stale ones taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from deepfake.errors import RunDirLocked
from deepfake.tracking.checkpoint import HOST
from deepfake.tracking.run_lock import LOCK_NAME, Holder, RunDirLock, refuse_if_held

# Holds the lock of argv[1] until its stdin closes.
_HOLD = textwrap.dedent(
    """
    import sys
    from deepfake.tracking.run_lock import RunDirLock
    with RunDirLock(sys.argv[1], stale_after_s=60):
        print("held", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def holder(tmp_path):
    """Another live process holding tmp_path's lock."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def _write_record(run_dir: Path, age_s: float = 0.0, **changes) -> Path:
    """A lock file as another process would have left it, its heartbeat ``age_s`` seconds old."""
    record = replace(Holder.this_process(), **changes)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps(asdict(record)) + "\n")
    beat = time.time() - age_s
    os.utime(path, (beat, beat))
    return path


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "deepfake.tracking.run_lock" and r.levelno == logging.WARNING
    ]


def test_the_holder_is_recorded_kept_alive_by_its_heartbeat_and_gone_after_release(tmp_path):
    path = tmp_path / LOCK_NAME
    with RunDirLock(tmp_path, stale_after_s=0.5):  # a heartbeat every 0.05 s
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == HOST
        assert Path(sys.argv[0]).name in record["command"] and record["started_at"][:2] == "20"
        os.utime(path, (0, 0))
        deadline = time.monotonic() + 10
        while path.stat().st_mtime == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.stat().st_mtime > 0
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp left behind


def test_a_live_holder_is_named_and_nothing_is_touched(tmp_path, holder):
    path = tmp_path / LOCK_NAME
    before = path.read_bytes()
    with pytest.raises(RunDirLocked) as refused:
        RunDirLock(tmp_path).acquire()
    message = str(refused.value)
    assert f"is being written by PID {holder.pid} on {HOST}, started " in message
    assert "-c" in message and f"delete {path}" in message and "\n" not in message
    with pytest.raises(RunDirLocked, match=f"PID {holder.pid}"):
        refuse_if_held(tmp_path)
    assert path.read_bytes() == before

    holder.stdin.close()  # it ends its run and releases the lock
    assert holder.wait(timeout=30) == 0 and not path.exists()
    refuse_if_held(tmp_path)
    with RunDirLock(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_killed_holders_lock_is_taken_over_with_one_warning(tmp_path, holder, caplog):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    refuse_if_held(tmp_path)  # stale: what scripts/main.py checks before Hydra lets it through
    with RunDirLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    [warning] = _warnings(caplog)
    assert f"took over the stale lock of {tmp_path} from PID {holder.pid} on {HOST}" in warning
    assert f"PID {holder.pid} is no longer running" in warning


def test_another_machines_lock_goes_stale_only_when_its_heartbeat_stops(tmp_path, caplog):
    path = _write_record(tmp_path, age_s=5, host="node-elsewhere", pid=os.getpid() + 1)
    with pytest.raises(RunDirLocked, match="on node-elsewhere"):
        RunDirLock(tmp_path, stale_after_s=60).acquire()

    os.utime(path, (time.time() - 120, time.time() - 120))
    with RunDirLock(tmp_path, stale_after_s=60):
        assert json.loads(path.read_text())["host"] == HOST
    [warning] = _warnings(caplog)
    assert "on node-elsewhere" in warning and "no heartbeat for 120 s (stale after 60 s)" in warning


def test_a_holder_in_another_containers_pid_namespace_is_judged_by_its_heartbeat(tmp_path, caplog):
    """Same hostname, another PID namespace: its pid means nothing here, even when no process has it."""
    unused_pid = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 10_000
    path = _write_record(tmp_path, age_s=5, pid=unused_pid, pid_ns="pid:[1]")
    with pytest.raises(RunDirLocked, match=f"PID {unused_pid} on {HOST}"):
        RunDirLock(tmp_path, stale_after_s=60).acquire()

    os.utime(path, (time.time() - 120, time.time() - 120))
    with RunDirLock(tmp_path, stale_after_s=60):
        pass
    [warning] = _warnings(caplog)
    assert "no heartbeat for 120 s" in warning


@pytest.mark.parametrize(
    ("changes", "reason"),
    [({"boot_id": "an-earlier-boot"}, "this machine has rebooted since"),
     ({"pid_start": 1}, "now belongs to another process")],
    ids=["rebooted", "pid reused"],
)  # fmt: skip
def test_a_live_pid_that_is_not_the_holder_does_not_keep_the_lock(tmp_path, caplog, changes, reason):
    _write_record(tmp_path, **changes)  # our own pid, alive, but another boot / another process start
    with RunDirLock(tmp_path):
        pass
    [warning] = _warnings(caplog)
    assert reason in warning


def test_an_unreadable_record_is_held_until_its_heartbeat_stops(tmp_path, caplog):
    path = tmp_path / LOCK_NAME
    path.write_text("{half a rec")
    with pytest.raises(RunDirLocked, match="whose record in .* cannot be read"):
        RunDirLock(tmp_path, stale_after_s=60).acquire()
    os.utime(path, (time.time() - 61, time.time() - 61))
    with RunDirLock(tmp_path, stale_after_s=60):
        pass
    assert "from an unreadable record" in _warnings(caplog)[0]


@pytest.mark.parametrize("changes", [{"pid": "123"}, {"pid": None}, {"pid_start": "early"}, {"host": 7}])
def test_a_record_with_a_field_of_the_wrong_type_is_judged_as_an_unreadable_one(tmp_path, caplog, changes):
    """A hand-edited record: a TypeError traceback in every command that met the lock."""
    _write_record(tmp_path, age_s=5, **changes)
    with pytest.raises(RunDirLocked, match="whose record in .* cannot be read"):
        RunDirLock(tmp_path, stale_after_s=60).acquire()
    os.utime(tmp_path / LOCK_NAME, (time.time() - 61, time.time() - 61))
    with RunDirLock(tmp_path, stale_after_s=60):
        pass
    assert "from an unreadable record" in _warnings(caplog)[0]


def test_wait_s_waits_for_a_holder_to_go_stale(tmp_path, caplog):
    _write_record(tmp_path, age_s=0.5, host="node-elsewhere")
    with pytest.raises(RunDirLocked):
        RunDirLock(tmp_path, stale_after_s=1.5).acquire()
    with RunDirLock(tmp_path, stale_after_s=1.5, wait_s=30):
        pass
    assert "no heartbeat for" in _warnings(caplog)[0]


def test_a_lock_taken_from_its_holder_is_left_to_the_new_holder(tmp_path, caplog):
    lock = RunDirLock(tmp_path, stale_after_s=0.5)
    lock.acquire()
    newcomer = _write_record(tmp_path, host="node-elsewhere")  # as if it took over while we were suspended
    deadline = time.monotonic() + 10
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.01)
    lock.release()
    assert json.loads(newcomer.read_text())["host"] == "node-elsewhere"
    assert "it is no longer the run's only writer" in caplog.records[0].getMessage()


# Started at the same instant; each holds what it gets long enough for the others to look.
_CONTEND = textwrap.dedent(
    """
    import sys, time
    from deepfake.errors import RunDirLocked
    from deepfake.tracking.run_lock import RunDirLock
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
    try:
        with RunDirLock(sys.argv[1]):
            print("acquired", flush=True)
            time.sleep(5)
    except RunDirLocked as err:
        print(f"refused: {err}", flush=True)
    """
)


def test_contenders_for_a_killed_writers_lock_let_exactly_one_in(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    start_at = str(time.time() + 3)
    contenders = [
        subprocess.Popen([sys.executable, "-c", _CONTEND, str(tmp_path), start_at], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in contenders]
    winners = [proc.pid for proc, out in zip(contenders, outputs) if out.startswith("acquired")]
    assert len(winners) == 1, outputs
    refusals = [out for out in outputs if out.startswith("refused")]
    assert len(refusals) == 3 and all(f"PID {winners[0]} on {HOST}" in out for out in refusals), outputs


def test_a_take_over_of_a_lock_that_changed_hands_since_it_was_seen_stale_is_given_up(tmp_path, holder):
    """Two contenders see the same stale lock; the first takes it over. The second's take-over must
    then find the lock changed and leave the winner's file alone (it deleted the winner's lock)."""
    from deepfake.tracking.run_lock import _look

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    path = tmp_path / LOCK_NAME
    seen_stale = _look(path)  # what the slower contender saw before the winner took it
    with RunDirLock(tmp_path):  # the winner
        winners = path.read_bytes()
        late = RunDirLock(tmp_path)
        record = (json.dumps(asdict(replace(Holder.this_process(), pid=os.getpid() + 1))) + "\n").encode()
        assert late._take_over(seen_stale, record) is False
        assert path.read_bytes() == winners
