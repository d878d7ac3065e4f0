"""Flower's, Ray's and Python's warnings go to a log file, not onto the terminal.

Flower attaches its own console handler to the `flwr` logger when first imported and
prints deprecation banners through it; Ray reports through `ray` and `warnings`. A command
that runs the Simulation Engine calls `flower_logs_to(path)` before it starts, keeps its
own progress lines on the terminal and names the file at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["FLOWER_LOGGERS", "flower_logs_to"]

FLOWER_LOGGERS = ("flwr", "ray", "py.warnings")


def flower_logs_to(path: Path, level: int = logging.INFO) -> Path:
    """Send the FLOWER_LOGGERS (and Python warnings) to `path` only, from now on in this
    process; returns `path`. The folder is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # Flower attaches its console handler when first imported: import it first
        import flwr.common.logger  # noqa: F401
    except ImportError:
        pass
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Off, then on: a second captureWarnings(True) is a no-op, and would keep whatever
    # showwarning was put back since the first (pytest puts its own back for every test).
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    for name in FLOWER_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return path
