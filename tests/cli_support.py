"""Run the `edgeops` command as a user would: a fresh interpreter, output captured."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# The checkout's root: the working directory for `python -m tests....` child processes.
REPO_ROOT = Path(__file__).resolve().parents[1]


def run_edgeops(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 240,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m edgeops.cli ARGS`; the caller checks the exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "edgeops.cli", *args],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
