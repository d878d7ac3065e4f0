"""Stopping child processes the way an operator would: ask first, then insist."""

from __future__ import annotations

import signal
import subprocess


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
