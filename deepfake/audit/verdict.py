"""The outcome of one audit check: a level and one line saying why."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PASS, INFO, WARN, FAIL = "pass", "info", "warn", "fail"
LEVELS = (PASS, INFO, WARN, FAIL)  # worst last


@dataclass(frozen=True)
class Verdict:
    level: str
    message: str

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown verdict level {self.level!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def worst(levels) -> str:
    return max(levels, key=LEVELS.index, default=PASS)
