"""dataset.cache as a training run meets it: every cache the run will read made, or refused, before training."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow


def test_the_test_sets_cache_is_built_before_training_and_read_after_it(tmp_path, main_runner):
    # A test cache the disk cannot hold was refused only once training had ended: best.pth trained, nothing
    # tested or registered. Built at start-up, it is refused before the compute, and read back at the end.
    result = main_runner("dataset.cache=eval", f"dataset.cache_dir={tmp_path / 'cache'}")
    log = result.stdout + result.stderr
    builds = re.findall(r"decoding \d+ images of \S*?(\w+)\.csv into the cache", log)
    assert sorted(builds) == ["test", "valid"]  # each once: the end of the run found the test cache
    assert log.index("test.csv into the cache") < log.index("epoch 1")
    assert list((tmp_path / "outputs").rglob("metrics_test.json"))


@pytest.mark.parametrize("cache_dir", ["a_file", "a_file/below"])
def test_an_unusable_cache_folder_is_one_line_and_exit_2(tmp_path, main_runner, cache_dir):
    (tmp_path / "a_file").write_text("not a folder")
    result = main_runner("dataset.cache=eval", f"dataset.cache_dir={tmp_path / cache_dir}", check=False)
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert "a file is in the way" in line and "set dataset.cache_dir" in line
    assert "Traceback" not in result.stderr and "bug" not in result.stderr
