"""Memory stays flat over epochs: a 140k-row CSV, 4 persistent workers, the project's own loader.

Two known ways for DataLoader workers to grow: per-sample Python objects (a list of path strings)
whose reference counts each worker touches, copying their pages; and the workers' garbage collector
writing into every object inherited from the main process. Private memory (USS) shows both; the
resident total (RSS, the issue's figure) counts shared pages in every process and moves less.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from deepfake.data.csv_dataset import CsvImageDataset
from deepfake.engine.loaders import train_loader

psutil = pytest.importorskip("psutil", reason="the bench extra (pip install -e '.[bench]') measures memory")

pytestmark = pytest.mark.slow

ROWS, WORKERS, EPOCHS = 140_000, 4, 4


def _memory(process, others: set[int]) -> tuple[int, list]:
    """(RSS, USS) summed over ``process`` and its workers (children not in ``others``), and the workers."""
    workers = [child for child in process.children(recursive=True) if child.pid not in others]
    tree = [process, *workers]
    return (sum(p.memory_info().rss for p in tree), sum(p.memory_full_info().uss for p in tree)), workers


def test_memory_of_the_process_and_its_workers_is_flat_from_epoch_2_to_4(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for number in range(4):
        Image.new("RGB", (8, 8), (60 * number, 0, 0)).save(root / f"{number}.png")
    names = [f"{number % 4}.png" for number in range(ROWS)]  # each row's path still a string of its own
    csv = tmp_path / "big.csv"
    csv.write_text("path,label\n" + "".join(f"{name},{number % 2}\n" for number, name in enumerate(names)))
    logging.getLogger("deepfake.data.csv_dataset").setLevel(logging.ERROR)  # every row repeats one of 4 images
    dataset = CsvImageDataset(csv, root)
    assert type(dataset.paths).__name__ == "PathTable" and isinstance(dataset.targets, np.ndarray)

    loader = train_loader(dataset, 2048, seed=0, num_workers=WORKERS)
    process = psutil.Process()
    others = {child.pid for child in process.children(recursive=True)}  # not ours (pytest-xdist's, say)
    measured, workers = [], []
    for epoch in range(EPOCHS):
        loader.sampler.set_epoch(epoch)
        assert sum(len(batch["index"]) for batch in loader) == ROWS
        sizes, now = _memory(process, others)
        measured.append(sizes)
        workers.append({worker.pid for worker in now})
    assert len(workers[0]) == WORKERS and all(pids == workers[0] for pids in workers)  # the same 4 all along

    (rss_2, uss_2), (rss_4, uss_4) = measured[1], measured[3]
    print(f"RSS epoch 2 -> 4: {rss_2 / 2**20:.0f} -> {rss_4 / 2**20:.0f} MiB; "
          f"USS {uss_2 / 2**20:.0f} -> {uss_4 / 2**20:.0f} MiB")  # fmt: skip
    assert rss_4 < 1.05 * rss_2
    assert uss_4 < 1.05 * uss_2
