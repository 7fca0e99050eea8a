"""Near neighbours of 64-bit hashes by Hamming distance, without comparing all pairs.

Multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012): cut each hash into ``m`` chunks. Two
hashes within distance ``d`` differ, by the pigeonhole principle, in at most ``d // m`` bits of some
chunk, so every neighbour sits in one of the few buckets obtained by flipping up to ``d // m`` bits
of a query's chunk. With ``m > d / 2`` that is one bit: each chunk is looked up at itself and its
single-bit flips. Candidates are then checked on all 64 bits. 100k hashes query in seconds.
"""

from __future__ import annotations

import numpy as np

_BITS = 64


def _chunks(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of ``m`` chunks covering the 64 bits, ``m`` the smallest with ``d // m <= 1``."""
    count = min(_BITS, max_distance // 2 + 1)
    widths = [_BITS // count + (i < _BITS % count) for i in range(count)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    return [(int(shift), int(width)) for shift, width in zip(shifts, widths)]


def _chunk(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)


def popcount(values: np.ndarray) -> np.ndarray:
    return np.bitwise_count(values).astype(np.int64)


class HammingIndex:
    """An index over ``hashes`` (uint64) answering "which are within ``max_distance`` bits of these?"."""

    def __init__(self, hashes: np.ndarray, max_distance: int) -> None:
        if not 0 <= max_distance < _BITS // 2:
            raise ValueError(f"max_distance={max_distance} must be between 0 and {_BITS // 2 - 1} bits")
        self.hashes = np.asarray(hashes, dtype=np.uint64)
        self.max_distance = int(max_distance)
        self._tables = []
        for shift, width in _chunks(self.max_distance):
            keys = _chunk(self.hashes, shift, width)
            order = np.argsort(keys, kind="stable")
            self._tables.append((shift, width, keys[order], order))

    def query(self, queries: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(query index, item index, distance)`` of every pair within ``max_distance``, each once."""
        queries = np.asarray(queries, dtype=np.uint64)
        found = [self._query_block(queries[start : start + block], start) for start in range(0, len(queries), block)]
        if not found:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        query_index, item_index, distance = (np.concatenate(parts) for parts in zip(*found))
        return query_index, item_index, distance

    def _query_block(self, queries: np.ndarray, offset: int):
        pairs = [self._candidates(queries, table) for table in self._tables]
        query_index = np.concatenate([p[0] for p in pairs])
        item_index = np.concatenate([p[1] for p in pairs])
        distance = popcount(queries[query_index] ^ self.hashes[item_index])
        keep = distance <= self.max_distance
        query_index, item_index, distance = query_index[keep], item_index[keep], distance[keep]
        # A pair found through several chunks is kept once.
        _, first = np.unique(query_index * len(self.hashes) + item_index, return_index=True)
        return query_index[first] + offset, item_index[first], distance[first]

    @staticmethod
    def _candidates(queries: np.ndarray, table) -> tuple[np.ndarray, np.ndarray]:
        """Items whose chunk equals a query's chunk or one of its single-bit flips."""
        shift, width, sorted_keys, order = table
        keys = _chunk(queries, shift, width)
        flips = np.concatenate([[0], 1 << np.arange(width)]).astype(np.uint64)
        probes = (keys[:, None] ^ flips[None, :]).ravel()
        probe_query = np.repeat(np.arange(len(queries)), len(flips))
        lo = np.searchsorted(sorted_keys, probes, side="left")
        hi = np.searchsorted(sorted_keys, probes, side="right")
        counts = hi - lo
        # Expand each probe's [lo, hi) range of sorted positions into one row per candidate.
        total = int(counts.sum())
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        positions = starts + np.arange(total)
        return np.repeat(probe_query, counts), order[positions]
