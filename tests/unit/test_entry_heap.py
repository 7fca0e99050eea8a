"""scripts/main.py's garbage-collector policy: off while the libraries load, their objects frozen out of
its reach once the first task's modules are in, and every later job's garbage still collected."""

from __future__ import annotations

import subprocess
import sys

from conftest import MAIN

# In a fresh interpreter: importing the entry point as a module runs its start-up policy, as
# `python scripts/main.py` does, without touching this test process's own collector.
POLICY = f"""
import gc, sys, weakref
sys.path.insert(0, {str(MAIN.parent)!r})
import main
assert not gc.isenabled(), "the collector runs while the libraries load"
import torch
main.settle_heap()  # the first job's modules are in
assert gc.isenabled()
frozen = gc.get_freeze_count()
assert frozen > 100_000, frozen  # torch's objects, out of the collector's reach

class Job:
    "A finished job's state, held in a reference cycle as trainers and their callbacks are."

job = Job()
job.itself, job.weights = job, torch.zeros(1000)
finished = weakref.ref(job)
del job
main.settle_heap()  # the next job of a sweep
assert gc.get_freeze_count() == frozen, "a later job froze the heap again"
gc.collect()
assert finished() is None, "a finished job's garbage was frozen, never to be freed"
print("ok")
"""


def test_collector_paused_for_imports_then_frozen_once():
    result = subprocess.run([sys.executable, "-c", POLICY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
