"""The stop signal's handler: it records the signal; the training loop's poll logs it."""

from __future__ import annotations

import logging
import signal

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
