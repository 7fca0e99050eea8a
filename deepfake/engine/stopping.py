"""SIGINT/SIGTERM/SIGUSR2 ask training to stop at the next safe point instead of dying mid-step.

A scheduler's pre-emption (SLURM sends SIGTERM before SIGKILL; submitit asks SLURM for SIGUSR2 before
a time-out) or Ctrl-C should cost at most the current batch: the trainer finishes it, writes
``last.pth`` and returns, and a resumed run goes on from exactly there. A second signal gets the
previous behaviour back, so a user can still insist.

A launcher that had its own handler for the signal (submitit requeues the job on SIGUSR2) is not
robbed of it: once ``last.pth`` is saved, :meth:`StopRequest.hand_back` calls that handler.
"""

from __future__ import annotations

import atexit
import gc
import logging
import multiprocessing
import multiprocessing.util  # registers its exit hook first, so the one below runs before it (LIFO)
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopRequest:
    """Set by the first SIGINT/SIGTERM while :meth:`listening`; polled by the training loop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._unannounced = False  # a signal arrived and the log does not say so yet

    @property
    def requested(self) -> bool:
        """Polled by the training loop after every batch, which is where a received signal is logged:
        not in the handler (see :meth:`listening`)."""
        if self._unannounced:
            self._unannounced = False
            log.warning(
                "%s received: stopping after the current batch to save last.pth (send it again to quit at once)",
                signal.Signals(self.signum).name,
            )
        return self.signum is not None

    @contextmanager
    def listening(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may install handlers; embedding code keeps its own
            return
        previous = self._previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

        def on_signal(signum: int, _frame) -> None:
            # No logging here: Python runs the handler between two bytecodes of the main thread, which
            # may be inside a log handler writing run.log, and a buffered file refuses a write from
            # within its own write ("RuntimeError: reentrant call"), a traceback on the console.
            self.signum, self._unannounced = signum, True
            for other, handler in previous.items():
                # A second SIGTERM quits at once, as the log says: not raised as an exception, which a
                # process stuck in C code (a hung read, a device sync) would never get to.
                signal.signal(other, signal.SIG_DFL if handler is _raise_stop_signal else handler)

        for signum in STOP_SIGNALS:
            signal.signal(signum, on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def hand_back(self) -> None:
        """Run the handler the received signal had before training took it over, if it was a
        launcher's (a Python callable other than those raising Ctrl-C's KeyboardInterrupt or a
        StopSignal): submitit's handler requeues the job and exits; the requeued job resumes from the
        ``last.pth`` just saved."""
        handler = self._previous.get(self.signum) if self.signum is not None else None
        if callable(handler) and handler not in (signal.default_int_handler, _raise_stop_signal):
            log.info("handing %s back to the launcher's own handler", signal.Signals(self.signum).name)
            handler(self.signum, None)


class StopSignal(KeyboardInterrupt):
    """SIGTERM outside training's loop, raised where the process is, as Python raises Ctrl-C's
    KeyboardInterrupt: whatever catches that one (a task's stop line, the run's status, the run dir's
    lock) handles this one too. ``signum`` gives the shell's exit status, 128 + it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def raise_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler's pre-emption, ``docker stop``) during set-up, the image scan or
    the test of best.pth killed the process without a word: status.json left "running", run.lock and
    the trackers left open. Raised as :class:`StopSignal`, it ends as Ctrl-C does there. A handler
    someone else installed (submitit's, which ignores it and requeues on SIGUSR2) is kept."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_stop_signal)


def _raise_stop_signal(signum: int, _frame) -> None:
    raise StopSignal(signum)


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: deaf to stop signals. (Seeds need nothing here: torch seeds each
    worker's python, numpy and torch generators from the loader's generator and the worker's id.)

    Ctrl-C reaches the whole process group and SLURM signals every process of a job; a worker that
    died of it would break the batch the main process is finishing. Workers still end with the
    main process (the loader shuts them down, and they watch their parent).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # Everything inherited from the main process leaves the garbage collector's view (O(1)). Otherwise
    # the worker's first full collection writes into the header of every object it inherited (torch,
    # timm, the dataset) and so copies each page holding one: measured, each of 4 workers grew from 21
    # to 107 MiB of private memory at its third epoch. Those objects live as long as the worker anyway.
    gc.freeze()


def _end_deaf_workers() -> None:
    """At exit, end the loader workers torch could not: they ignore SIGTERM (:func:`init_worker`), and
    multiprocessing's own exit hook SIGTERMs its daemonic children, then joins them without a timeout.
    A Ctrl-C (or any error) that lands while a loader starts its workers, after one started and before
    torch recorded it, leaves that worker out of torch's shutdown: the process then waited for ever
    instead of exiting. Only daemonic children are touched, which multiprocessing would end here anyway."""
    deaf = [child for child in multiprocessing.active_children() if child.daemon]
    for child in deaf:
        child.terminate()  # a daemon that still listens to SIGTERM ends as multiprocessing would end it
    for child in deaf:
        child.join(timeout=1)
        if child.is_alive():
            child.kill()
            child.join(timeout=5)


atexit.register(_end_deaf_workers)
