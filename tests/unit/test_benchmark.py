"""The bench's timing helpers (deepfake/engine/benchmark.py)."""

from __future__ import annotations

import time

import torch

from deepfake.engine import benchmark


def test_a_compiled_run_compiles_in_an_untimed_call_even_with_no_warmup():
    """bench.warmup=0 with train.compile: the compilation (the first call) is warmup_s, not figure (a)."""
    calls = []

    def run() -> int:
        calls.append(time.perf_counter())
        if len(calls) == 1:
            time.sleep(0.3)  # as torch.compile's first call compiles
        return 64

    figure = benchmark.images_per_second(run, torch.device("cpu"), repeats=2, warmup=0, compiled=True)
    assert len(calls) == 3 and figure["warmup_s"] >= 0.3
    assert len(figure["repeats"]) == 2 and min(figure["repeats"]) > 64 / 0.3  # neither repeat paid for it

    calls.clear()
    eager = benchmark.images_per_second(run, torch.device("cpu"), repeats=2, warmup=0)
    assert len(calls) == 2 and eager["warmup_s"] == 0.0  # not compiled: bench.warmup=0 means no warm-up
