"""scripts/main.py runs forked from a warm interpreter: the CLI tests' way to skip ~9 s of imports per run.

A fresh ``python scripts/main.py`` spends about 9 s of this 2-core machine importing torch, torchvision,
timm and the project before its first line of work; the suite starts well over a hundred of them. Here
one server process per pytest worker imports all of that once, then forks a child per run. The child is
a real process with the run's own argv, working dir, environment, stdin (/dev/null), stdout and stderr
(files) and exit status; it executes scripts/main.py as ``__main__`` and leaves through the
interpreter's normal exit, atexit hooks included. Signals reach it by pid, as they reach a Popen.

What a fork cannot reproduce is left to fresh interpreters: the start-up time and import-free
``task=registry`` tests, and runs whose environment changes what a module reads at import (anything
beyond ``WARM_ENV_KEYS``) start ``python scripts/main.py`` as before (``fresh=True`` forces it).
``FORKED_CLI_LOG=<file>`` lists the runs that were not forked, and why.

The server is this file run as a script. It answers one JSON line per request line on stdin:
``{"spawn": {...}}`` -> ``{"pid": N}``, ``{"poll": N}`` -> ``{"rc": code or null}``.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "scripts" / "main.py"

# Variables a run may set differently from the server's without the fork going stale: read at run
# time by our code, Hydra or rich, or (OMP_NUM_THREADS) applied in the child below.
# PYTEST_CURRENT_TEST names the running test and changes with each; LD_LIBRARY_PATH, which an import in
# the pytest process may extend (cv2's does), is read by the dynamic loader once, at start.
WARM_ENV_KEYS = {
    "OMP_NUM_THREADS", "COLUMNS", "HF_HUB_OFFLINE", "DEEPFAKE_ROOT", "PYTHONHASHSEED", "PYTEST_CURRENT_TEST",
    "LD_LIBRARY_PATH",
}  # fmt: skip


# ---------------------------------------------------------------------------------------- server


def _warm_up() -> None:
    """Import what every run imports: main.py's own imports and the training, evaluation and CAM tasks."""
    os.environ.setdefault("DEEPFAKE_ROOT", str(REPO))
    import hydra  # noqa: F401

    import deepfake.tasks  # noqa: F401
    import deepfake.tasks.cam  # noqa: F401
    import deepfake.tasks.test  # noqa: F401
    import deepfake.tasks.train  # noqa: F401


def _child(request: dict) -> None:
    """In the forked child: become ``python scripts/main.py <argv>`` and never return to the loop."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdin = open(os.devnull)  # noqa: SIM115  (for the run's life; the server's may hold requests)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "OMP_NUM_THREADS" in request["env"]:  # what a fresh torch reads from the environment at start
        import torch

        torch.set_num_threads(int(request["env"]["OMP_NUM_THREADS"]))
    sys.argv = [str(MAIN), *request["argv"]]
    sys.path[0] = str(MAIN.parent)
    import runpy

    runpy.run_path(str(MAIN), run_name="__main__")
    sys.exit(0)  # main.py always exits itself; this is for a script that would fall off its end


def serve() -> None:
    _warm_up()
    # The warm objects never die; left to the collector, every child's first collections would walk
    # (and so copy, page by page) the whole heap it shares with the server.
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pytest worker's Ctrl-C is for it, not for us
    statuses: dict[int, int] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if "spawn" in request:
            pid = os.fork()
            if pid == 0:
                _child(request["spawn"])
            reply = {"pid": pid}
        else:
            pid = request["poll"]
            if pid not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[pid] = os.waitstatus_to_exitcode(status)
            reply = {"rc": statuses.get(pid)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------- client


class _Server:
    """The server a pytest process forks its runs from, started on first use and again whenever the
    process's own environment has changed since (a test module that set a variable for good)."""

    _instance: _Server | None = None
    _guard = threading.Lock()

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        self.lock = threading.Lock()
        atexit.register(self.proc.kill)  # a replaced server lives on for the runs it still has

    @classmethod
    def for_env(cls, env: dict[str, str]) -> _Server | None:
        """The server a run with ``env`` forks from; None when the run needs a fresh interpreter (it sets
        a variable that a module may read at import)."""
        current = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
        if cold := _cold_keys(current, env):
            _note(f"fresh interpreter: the run sets {cold}")
            return None
        with cls._guard:
            server = cls._instance
            if server is None or server.proc.poll() is not None or _cold_keys(server.env, current):
                if server is not None:
                    _note(f"new server: the environment changed {_cold_keys(server.env, current)}")
                cls._instance = server = _Server(current)
            return server

    def ask(self, request: dict) -> dict:
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the forked-CLI server died")
        return json.loads(line)


class ForkedRun:
    """What the tests use of ``subprocess.Popen``: pid, poll, wait, communicate, send_signal, kill."""

    def __init__(self, server: _Server, argv: list[str], cwd: Path, env: dict[str, str]):
        self.args = [sys.executable, str(MAIN), *argv]
        self._dir = tempfile.TemporaryDirectory(prefix="forked_cli_")
        self._out, self._err = Path(self._dir.name, "stdout"), Path(self._dir.name, "stderr")
        self._server = server
        spawn = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(self._out), "stderr": str(self._err)}
        self.pid = self._server.ask({"spawn": spawn})["pid"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.ask({"poll": self.pid})["rc"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self._out.read_text(errors="replace"), self._err.read_text(errors="replace")

    def output_so_far(self) -> str:
        """stdout and stderr while it runs (a Popen's pipes cannot be read without waiting)."""
        return "".join(path.read_text(errors="replace") for path in (self._out, self._err) if path.is_file())

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _cold_keys(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The variables two environments disagree on that a fork cannot take over."""
    return sorted(key for key in {*a, *b} - WARM_ENV_KEYS if a.get(key) != b.get(key))


def _note(line: str) -> None:
    """With FORKED_CLI_LOG set, why a run was not forked from a warm server: to keep the suite fast."""
    if os.environ.get("FORKED_CLI_LOG"):
        with open(os.environ["FORKED_CLI_LOG"], "a") as log:
            log.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?')}: {line}\n")


def start(argv: list[str], cwd: Path, env: dict[str, str], fresh: bool = False):
    """``python scripts/main.py <argv>`` as a Popen-like handle, forked when the environment allows."""
    server = None if fresh else _Server.for_env(env)
    if server is None:
        return subprocess.Popen(
            [sys.executable, str(MAIN), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=cwd,
        )  # fmt: skip
    return ForkedRun(server, argv, cwd, env)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, fresh: bool = False):
    """``subprocess.run(python scripts/main.py <argv>, capture_output=True, text=True)``, forked when it can be."""
    proc = start(argv, cwd, env, fresh)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


if __name__ == "__main__":
    serve()
