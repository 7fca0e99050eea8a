"""The forked runs the CLI tests use (tests/forked_cli.py) answer as a fresh ``python scripts/main.py``:
the same output and exit status, in the run's own working dir. (Signals reach them by
pid: the kill-and-resume tests send theirs to forked runs.)"""

from __future__ import annotations

import os

import forked_cli
from conftest import run_main


def test_a_forked_run_prints_and_exits_as_a_fresh_one(tmp_path):
    for args in (["--cfg=job", "seed=7"], ["nosuchkey=1"], ["task=registry"]):
        forked, fresh = (run_main(tmp_path, *args, check=False, fresh=f) for f in (False, True))
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert forked.returncode == 0 and "no runs registered" in forked.stdout
    assert "seed: 7" in run_main(tmp_path, "--cfg=job", "seed=7").stdout


def test_a_forked_run_has_its_own_directory_and_pid(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = forked_cli.start(["--cfg=hydra"], tmp_path, env)
    assert isinstance(proc, forked_cli.ForkedRun) and proc.pid != os.getpid()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"cwd: {tmp_path}\n" in out  # Hydra's record of the working dir

    # A variable a module reads at import is not the server's to fake: a fresh interpreter runs it.
    fresh = forked_cli.start(["--help"], tmp_path, {**env, "MY_IMPORT_TIME_VAR": "1"})
    assert not isinstance(fresh, forked_cli.ForkedRun)
    assert fresh.communicate(timeout=120)[0] and fresh.returncode == 0
