"""Many file paths in two numpy arrays, so forked DataLoader workers never copy them.

A Python list of 140k ``str`` is 140k objects whose reference counts change whenever a worker reads
one; each change dirties the page holding it, so every worker ends up with its own copy of the list
(PyTorch issue 13246). Here the paths are one byte buffer plus offsets: reading a path touches no
shared object, and the pages stay shared for the whole run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np


class PathTable(Sequence[str]):
    """An immutable sequence of paths (``str``), stored as UTF-8 bytes (undecodable names survive
    through the file system encoding's surrogate escapes) and their end offsets."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        encoded = [os.fsencode(path) for path in paths]
        self._ends = np.cumsum([len(item) for item in encoded], dtype=np.int64)
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index):  # Sequence's contract: an int gives a path, a slice a list
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative indices, and IndexError past the end
        start = int(self._ends[index - 1]) if index else 0
        return os.fsdecode(self._bytes[start : int(self._ends[index])].tobytes())

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        if isinstance(other, PathTable):
            return np.array_equal(self._ends, other._ends) and np.array_equal(self._bytes, other._bytes)
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"PathTable({len(self)} paths, {self._bytes.nbytes} bytes)"

    def non_empty(self) -> np.ndarray:
        """A boolean mask of the entries that are not ``""`` (optional columns such as mask_path)."""
        return np.diff(self._ends, prepend=0) > 0
