"""The agent's own resident memory and CPU use, reported in every telemetry batch.

On Linux both come straight from the kernel: RSS from `/proc/self/statm` (what
`psutil.Process().memory_info().rss` reads) and CPU time from `os.times()`, so the agent
does not pay psutil's import in memory (benchmarks/bench_telemetry.py, part c). Elsewhere
psutil is used if it is installed, and the numbers are None if it is not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ProcessStats"]

_STATM = "/proc/self/statm"


def _rss_bytes_from_proc() -> int | None:
    """Resident set size from /proc (pages x page size); None where there is no /proc."""
    try:
        with open(_STATM, "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class ProcessStats:
    """RSS in MB and CPU percent of this process since the previous `sample()`.

    The CPU percent means what psutil's `cpu_percent(interval=None)` means: CPU seconds of
    all threads over wall seconds, x 100 (above 100 when several cores are busy).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._psutil_process: Any = None
        if _rss_bytes_from_proc() is None:
            try:
                import psutil
            except ImportError:
                pass
            else:
                self._psutil_process = psutil.Process()
                self._psutil_process.cpu_percent(interval=None)  # sets the baseline
        self._last_wall_s = clock()
        self._last_cpu_s = _cpu_s()

    def sample(self) -> tuple[float | None, float | None]:
        if self._psutil_process is not None:
            process = self._psutil_process
            return process.memory_info().rss / 1e6, process.cpu_percent(interval=None)
        rss_bytes = _rss_bytes_from_proc()
        if rss_bytes is None:
            return None, None
        wall_s, cpu_s = self._clock(), _cpu_s()
        elapsed_s = wall_s - self._last_wall_s
        percent = 100.0 * (cpu_s - self._last_cpu_s) / elapsed_s if elapsed_s > 0 else 0.0
        self._last_wall_s, self._last_cpu_s = wall_s, cpu_s
        return rss_bytes / 1e6, round(percent, 1)
