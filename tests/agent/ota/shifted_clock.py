"""A clock for agents whose switch window a test opens: real time shifted to a chosen UTC
time of day (moving it keeps time flowing, so health windows still elapse)."""

from __future__ import annotations

import time

__all__ = ["DAY_S", "ShiftedClock"]

DAY_S = 86400


class ShiftedClock:
    """`clock()` is now plus an offset that puts it at `time_of_day_s` after 00:00 UTC."""

    def __init__(self, time_of_day_s: float) -> None:
        self.offset = 0.0
        self.set(time_of_day_s)

    def set(self, time_of_day_s: float) -> None:
        now = time.time()
        self.offset = (now - now % DAY_S + time_of_day_s) - now

    def __call__(self) -> float:
        return time.time() + self.offset
