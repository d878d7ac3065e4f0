"""Stopping child processes the way an operator would: ask first, then insist; and what
they cost."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def stop_process(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, wait up to `timeout_s` for a clean exit, then SIGKILL. Always reaps it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """A live process's peak resident memory (VmHWM), in MB. Not getrusage's ru_maxrss: a
    child started by fork and exec inherits its parent's high-water mark there."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return round(int(kib) / 1024, 1) if kib else None
