"""The stop signal's handler: it records the signal; the training loop's poll logs it."""

from __future__ import annotations

import logging
import signal

import pytest

from deepfake.engine.stopping import StopRequest


def test_a_stop_signal_is_logged_by_the_poll_not_inside_the_handler(caplog):
    """The handler logged, and so could run inside a log handler's write to run.log: the buffered file
    raised "reentrant call" and a traceback reached the console (a sweep stopped by Ctrl-C)."""
    stop = StopRequest()
    caplog.set_level(logging.WARNING, logger="deepfake.engine.stopping")
    with stop.listening():
        signal.raise_signal(signal.SIGTERM)
        assert caplog.records == []  # the handler has run (Python runs it at once) and logged nothing
        assert stop.signum == signal.SIGTERM
        assert stop.requested and stop.requested  # polled twice: announced once
    assert [r.getMessage() for r in caplog.records] == [
        "SIGTERM received: stopping after the current batch to save last.pth (send it again to quit at once)"
    ]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handlers are back


def test_a_rank_told_of_another_ranks_signal_stops_without_claiming_to_have_received_it(caplog):
    stop = StopRequest()
    caplog.set_level(logging.WARNING, logger="deepfake.engine.stopping")
    stop.signum = signal.SIGINT  # what Trainer._agree_on_stop sets from another rank's signal
    assert stop.requested
    assert caplog.records == []


def test_a_second_sigterm_in_training_quits_at_once_and_the_raising_handler_comes_back_after(caplog):
    """Outside training SIGTERM is raised as a StopSignal (scripts/main.py); in training's loop the first
    one asks for a stop, and the second must quit at once, as its log line says: raised as an exception,
    it never reached a process stuck in C code."""
    from deepfake.engine.stopping import StopSignal, raise_on_sigterm

    original = signal.getsignal(signal.SIGTERM)
    caplog.set_level(logging.WARNING, logger="deepfake.engine.stopping")
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise_on_sigterm()
        raising = signal.getsignal(signal.SIGTERM)
        with pytest.raises(StopSignal) as stopped:
            signal.raise_signal(signal.SIGTERM)
        assert stopped.value.signum == signal.SIGTERM and isinstance(stopped.value, KeyboardInterrupt)
        stop = StopRequest()
        with stop.listening():
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the next one: the default action, death
        assert signal.getsignal(signal.SIGTERM) is raising
    finally:
        signal.signal(signal.SIGTERM, original)


STARTED_BUT_UNRECORDED = """
import multiprocessing.process, sys, torch
from torch.utils.data import DataLoader, TensorDataset
from deepfake.engine.stopping import init_worker

started = []
start = multiprocessing.process.BaseProcess.start
def start_then_interrupt(self):
    start(self)
    started.append(self)
    if len(started) == 2:  # where a Ctrl-C between torch's w.start() and its self._workers.append(w) lands
        raise KeyboardInterrupt
multiprocessing.process.BaseProcess.start = start_then_interrupt
try:
    for batch in DataLoader(TensorDataset(torch.zeros(64, 3)), batch_size=4, num_workers=2,
                            worker_init_fn=init_worker):
        pass
except KeyboardInterrupt:
    print("worker pids", *(process.pid for process in started), flush=True)
    sys.exit(130)
"""


def test_a_ctrl_c_while_loader_workers_start_still_exits_and_ends_them(tmp_path):
    """The worker torch had not recorded yet ignores SIGTERM and is in no shutdown of torch's: the process
    waited on it for ever at exit (what CI met as a predict that never ended after Ctrl-C)."""
    import subprocess
    import sys

    import psutil

    script = tmp_path / "interrupted.py"
    script.write_text(STARTED_BUT_UNRECORDED)
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the process did not exit: it waits on a loader worker torch lost") from None
    assert done.returncode == 130, done.stderr
    pids = [int(pid) for pid in done.stdout.split()[2:]]
    assert len(pids) == 2 and not any(psutil.pid_exists(pid) for pid in pids)
