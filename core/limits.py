"""What a demo workspace may do: caps on size and rate limits on the expensive actions. Outside demo mode there
are no limits and every check passes."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from core.errors import InputError

ACTION_WORDS = {"ingest": "uploads", "train": "fine-tunes", "evaluate": "evaluations", "generate": "questions",
                "dataset": "dataset generations"}


@dataclass(frozen=True)
class DemoLimits:
    max_file_mb: int = 5
    max_chunks: int = 3000  # all of a workspace's knowledge bases together
    max_train_minutes: float = 10.0  # the estimate made before launch
    max_eval_questions: int = 30
    max_web_pages: int = 5  # web addresses in one Add (each fetch may take minutes, and one Add is one use)
    idle_minutes: float = 120.0  # a workspace unused this long is deleted
    # action -> (how many, per how many seconds)
    rates: dict = field(default_factory=lambda: {
        "ingest": (10, 600), "train": (3, 3600), "evaluate": (5, 3600), "generate": (60, 600), "dataset": (5, 3600)})


class RateLimiter:
    """A sliding window per action: at most N uses in any W seconds."""

    def __init__(self, rates: dict, clock=time.monotonic):
        self.rates, self.clock = rates, clock
        self._used: dict[str, deque] = {}
        self._lock = threading.Lock()

    def spend(self, action: str) -> None:
        if action not in self.rates:
            return
        most, window = self.rates[action]
        now = self.clock()
        with self._lock:
            used = self._used.setdefault(action, deque())
            while used and used[0] <= now - window:
                used.popleft()
            if len(used) >= most:
                wait = int(used[0] + window - now) + 1
                raise InputError(
                    f"this demo allows {most} {ACTION_WORDS.get(action, action)} per {_duration(window)}; "
                    f"try again in {_wait(wait)} (run the app on your own machine for no limits)")
            used.append(now)


class Quota:
    """One workspace's limits, asked by the services before expensive work; `limits=None` allows everything."""

    def __init__(self, limits: DemoLimits | None = None):
        self.limits = limits
        self._rates = RateLimiter(limits.rates) if limits else None

    def spend(self, action: str) -> None:
        """Count one expensive action against the rate limit (refused with the wait when over)."""
        if self._rates:
            self._rates.spend(action)

    def check_passages(self, count_held) -> None:
        """`count_held()`: passages the workspace holds now (counted only in demo mode)."""
        if self.limits and (held := count_held()) >= self.limits.max_chunks:
            raise InputError(f"this demo workspace holds {held} passages, its limit is {self.limits.max_chunks}; "
                             "delete a file or a knowledge base first")

    def check_web_pages(self, count: int) -> None:
        if self.limits and count > self.limits.max_web_pages:
            raise InputError(f"{count} web addresses; this demo fetches at most {self.limits.max_web_pages} at a "
                             "time")

    def check_train_minutes(self, minutes: float, subject: str) -> None:
        if self.limits and minutes > self.limits.max_train_minutes:
            raise InputError(f"this fine-tune would take about {minutes} min; the demo allows "
                             f"{self.limits.max_train_minutes:g} min: use the Quick preset, fewer epochs or a "
                             "smaller dataset", subject=subject)

    def check_eval_questions(self, count: int) -> None:
        if self.limits and count > self.limits.max_eval_questions:
            raise InputError(f"{count} questions; the demo evaluates at most {self.limits.max_eval_questions} "
                             "at a time (set 'Questions (at most)' lower)")


def _duration(seconds: float) -> str:
    """A window in words: 'hour', '10 minutes'."""
    if seconds % 3600 == 0:
        return "hour" if seconds == 3600 else f"{int(seconds // 3600)} hours"
    return "minute" if seconds == 60 else f"{round(seconds / 60)} minutes"


def _wait(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{round(seconds / 60)} min"
