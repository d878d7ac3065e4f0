"""A daily maintenance window in UTC ("02:00-04:00"), in which a staged update may switch.

Pure: `SwitchWindow.parse(text)` validates the text form used everywhere (rollout policy,
CLI, API, the `update` command, the agent's update record); `group_windows` reads the
"GROUP=HH:MM-HH:MM" items the CLI and the console take; `contains(now)` and
`seconds_until_open(now)` take the epoch time and never read a clock. A window may cross
midnight ("22:00-02:00"); the start is inside it, the end is not. A start equal to its end
is refused: it could mean "never" or "all day", and neither needs a window.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from edgeops.errors import ConfigError

__all__ = ["DAY_S", "SwitchWindow", "SwitchWindowError", "group_windows"]

DAY_S = 24 * 3600
_PATTERN = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class SwitchWindowError(ConfigError, ValueError):
    """A window that is not "HH:MM-HH:MM" (UTC, 00:00-23:59, start != end).

    A ValueError too, so pydantic validators and dataclass checks report it as bad input."""


@dataclass(frozen=True, slots=True)
class SwitchWindow:
    """Minutes after 00:00 UTC of the window's start (inside) and end (outside)."""

    start_min: int
    end_min: int

    @classmethod
    def parse(cls, text: object) -> SwitchWindow:
        """`"02:00-04:00"` -> SwitchWindow(120, 240); SwitchWindowError naming what is wrong."""
        if not isinstance(text, str):
            raise SwitchWindowError(f"a switch window is a string \"HH:MM-HH:MM\", got {text!r}")
        match = _PATTERN.match(text.strip())
        if match is None:
            raise SwitchWindowError(
                f"switch window {text!r} is not \"HH:MM-HH:MM\" (UTC, e.g. \"02:00-04:00\")"
            )
        start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
        for hours, minutes in ((start_h, start_m), (end_h, end_m)):
            if hours > 23 or minutes > 59:
                raise SwitchWindowError(
                    f"switch window {text!r}: {hours:02d}:{minutes:02d} is not a time of day "
                    "(00:00 to 23:59)"
                )
        window = cls(start_h * 60 + start_m, end_h * 60 + end_m)
        if window.start_min == window.end_min:
            raise SwitchWindowError(
                f"switch window {text!r} starts where it ends: give a window of at least a minute"
            )
        return window

    def __str__(self) -> str:
        return f"{_hhmm(self.start_min)}-{_hhmm(self.end_min)}"

    @property
    def crosses_midnight(self) -> bool:
        return self.end_min < self.start_min

    def contains(self, now: float) -> bool:
        """`now` (epoch seconds) falls inside the window on its UTC day (start inclusive)."""
        second = now % DAY_S
        start, end = self.start_min * 60, self.end_min * 60
        if self.crosses_midnight:
            return second >= start or second < end
        return start <= second < end

    def seconds_until_open(self, now: float) -> float:
        """0 inside the window, else the seconds until it next opens (< one day)."""
        if self.contains(now):
            return 0.0
        return (self.start_min * 60 - now % DAY_S) % DAY_S


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def group_windows(items: Iterable[str]) -> dict[str, str]:
    """`["default=02:00-04:00", "*=01:00-03:00"]` -> {group: window}, as a rollout policy's
    `switch_windows`; SwitchWindowError naming the item that is wrong."""
    windows: dict[str, str] = {}
    for item in items:
        group, sep, window = item.partition("=")
        if not sep or not group.strip():
            raise SwitchWindowError(
                f"a switch window is GROUP=HH:MM-HH:MM (UTC; GROUP * for every other group), "
                f"got {item!r}"
            )
        windows[group.strip()] = str(SwitchWindow.parse(window))
    return windows
