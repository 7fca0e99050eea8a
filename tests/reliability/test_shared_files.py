"""The shared registry under eight separate interpreters finishing together, a writer killed while
it holds the lock, and temp files of killed writers cleaned up when the next run starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import registry

from deepfake.tracking.checkpoint import HOST
from reliability.faults import ENV, run

pytestmark = pytest.mark.slow

WRITERS, RUNS_PER_WRITER = 8, 5

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from deepfake.tracking.registry import Registry
    root, writer, start_at, aucs = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    registry = Registry(root / "models" / "model_metadata.json", root / "models" / "best_model.pth", lock_timeout=60)
    time.sleep(max(0.0, start_at - time.time()))  # every writer starts at the same instant
    for number, auc in enumerate(aucs):
        name = f"writer{writer}/run{number}"
        best = root / "runs" / name / "best.pth"
        best.parent.mkdir(parents=True, exist_ok=True)
        best.write_bytes(name.encode() * 1000)
        registry.register_run({"run_name": name, "best_val_auc": float(auc), "status": "finished"}, best)
    """
)


def test_eight_processes_registering_at_once_lose_nothing(tmp_path):
    aucs = {
        w: [round(0.5 + 0.49 * ((w * 7 + r * 3) % 41) / 40, 4) for r in range(RUNS_PER_WRITER)] for w in range(WRITERS)
    }
    start_at = time.time() + 3.0  # time for all interpreters to import
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(w), str(start_at), *map(str, aucs[w])], env=ENV
        )
        for w in range(WRITERS)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0] * WRITERS

    written = {f"writer{w}/run{r}": auc for w in range(WRITERS) for r, auc in enumerate(aucs[w])}
    reg = registry(tmp_path)
    kept = [entry["run_name"] for entry in reg["runs"]]
    print(f"registry entries kept / written: {len(set(kept))} / {len(written)}")
    assert sorted(kept) == sorted(written)  # none lost, none duplicated
    champion = max(written, key=lambda name: (written[name], name))
    assert written[reg["best_run"]] == written[champion]
    best = tmp_path / "runs" / reg["best_run"] / "best.pth"
    assert (tmp_path / "models" / "best_model.pth").read_bytes() == best.read_bytes()
    assert not [p for p in (tmp_path / "models").iterdir() if ".tmp." in p.name]


def test_a_writer_killed_while_holding_the_lock_blocks_nobody(tmp_path):
    hold = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from filelock import FileLock
        lock = FileLock(Path(sys.argv[1]) / "models" / "model_metadata.json.lock")
        lock.acquire()
        print("locked", flush=True)
        time.sleep(600)
        """
    )
    (tmp_path / "models").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    writer = subprocess.run(
        [sys.executable, "-c", _WRITER, str(tmp_path), "0", "0", "0.7"], env=ENV, timeout=60, capture_output=True,
        check=False,
    )  # fmt: skip
    assert writer.returncode == 0, writer.stderr
    assert [e["run_name"] for e in registry(tmp_path)["runs"]] == ["writer0/run0"]


def test_leftover_temps_of_killed_writers_are_removed_on_the_next_start(tmp_path, uninterrupted, reliable_data):
    run_dir = tmp_path / "outputs" / "train" / uninterrupted.name
    shutil.copytree(uninterrupted, run_dir)
    (tmp_path / "models").mkdir()
    dead_pid = 2**22 + 1  # above any pid the kernel hands out by default
    leftovers = [
        run_dir / f".last.pth.tmp.{HOST}.{dead_pid}.0badc0de",
        tmp_path / "models" / f".model_metadata.json.tmp.{HOST}.{dead_pid}.0badc0de",
    ]
    for temp in leftovers:
        temp.write_bytes(b"half a file")
    live = run_dir / f".best.pth.tmp.{HOST}.{os.getpid()}.0feedbee"  # a live writer's: spared
    live.write_bytes(b"being written")

    result = run(tmp_path, reliable_data, f"resume={run_dir}")
    assert result.returncode == 0, result.stderr
    assert not any(temp.exists() for temp in leftovers) and live.exists()
    assert json.loads((tmp_path / "models" / "model_metadata.json").read_text())["runs"][0]["status"] == "finished"
