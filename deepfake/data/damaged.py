"""Damaged images met while training or scoring: each logged once, counted per split."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torch.utils.data import Subset

log = logging.getLogger(__name__)


class DamagedImageLog:
    """Logs each damaged image once (path and reason) and counts them per split."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {}

    def record(self, split: str, dataset, indices: Iterable[int]) -> None:
        """``indices``: the items' own (their ``index``), which under a Subset (task=bench validates on the
        first batch) are those of the dataset beneath it."""
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        seen = self.seen.setdefault(split, set())
        for index in indices:
            if index not in seen:
                seen.add(index)
                log.warning(
                    "damaged image replaced by a black image: %s (%s)",
                    dataset.paths[index],
                    dataset.damage_reason(index) or "unreadable",
                )

    def saved(self) -> dict[str, list[int]]:
        """What last.pth keeps (lists: a weights-only load takes no sets), so that a resumed run's counts
        include the damaged images met before it was stopped."""
        return {split: sorted(indices) for split, indices in self.seen.items()}

    def merge(self, others: Iterable[dict[str, Iterable[int]]]) -> None:
        """Add what other ranks met (each rank loads its own share of the images), or a last.pth's."""
        for seen in others:
            for split, indices in seen.items():
                self.seen.setdefault(split, set()).update(indices)

    def counts(self) -> dict[str, int]:
        return {split: len(indices) for split, indices in self.seen.items() if indices}
