"""The epoch's training loss, kept on the device and read back only every few batches.

Reading a CUDA tensor (``loss.item()``, ``bool(torch.isfinite(loss))``) makes the host wait for the
device; doing it on every step keeps the GPU idle between steps. Here the loss is summed on the
device, and the first non-finite one (its batch and value) is remembered there too; :meth:`read`
brings everything back at once, at the trainer's log interval and before any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossReading:
    loss_sum: float  # sum over the epoch's samples so far of each batch's mean loss x its size
    first_bad_batch: int | None  # 0-based batch index of the first non-finite loss, or None
    first_bad_value: float | None


class LossWatch:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start(0.0)

    def start(self, loss_sum: float) -> None:
        """Begin (or, after a resume part-way through an epoch, go on with) an epoch's sum."""
        self._sum = torch.tensor(loss_sum, dtype=torch.float64, device=self.device)
        self._first_bad = torch.tensor(-1, dtype=torch.int64, device=self.device)
        self._bad_value = torch.tensor(0.0, dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor, batch_index: int, samples: int) -> None:
        """No host sync: every operation stays on the device."""
        loss = loss.detach().double()
        newly_bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad.masked_fill_(newly_bad, batch_index)
        self._bad_value = torch.where(newly_bad, loss, self._bad_value)
        self._sum += loss * samples

    def read(self) -> LossReading:
        """One host sync for all three values."""
        loss_sum, first_bad, bad_value = torch.stack([self._sum, self._first_bad.double(), self._bad_value]).tolist()
        bad = int(first_bad) >= 0
        return LossReading(loss_sum, int(first_bad) if bad else None, bad_value if bad else None)
