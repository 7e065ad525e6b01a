"""Progress reporting shared by long operations: a callback taking (fraction done, what is happening)."""
from __future__ import annotations

import time
from typing import Callable

ProgressFn = Callable[[float, str], None]


def silent(_fraction: float, _message: str) -> None:
    pass


class Stage:
    """Reports one stage of a longer job as a slice [start, end] of the whole, with a time-left estimate."""

    def __init__(self, report: ProgressFn | None, start: float, end: float, label: str):
        self.report = report or silent
        self.start, self.end, self.label = start, end, label
        self.t0 = time.perf_counter()

    def update(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        elapsed = time.perf_counter() - self.t0
        eta = f", ~{elapsed / share - elapsed:.0f}s left" if 0 < share < 1 and elapsed > 1 else ""
        self.report(self.start + (self.end - self.start) * share, f"{self.label} {done}/{total}{eta}")
