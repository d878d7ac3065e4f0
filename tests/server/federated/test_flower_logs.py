"""Flower's and Ray's loggers, and Python's warnings, go to the log file only."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.federated.flower_logs import FLOWER_LOGGERS, flower_logs_to


@pytest.fixture
def restored_loggers() -> Iterator[None]:
    saved = {
        name: (list(logger.handlers), logger.level, logger.propagate)
        for name in FLOWER_LOGGERS
        for logger in [logging.getLogger(name)]
    }
    yield
    logging.captureWarnings(False)
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def test_flower_ray_and_warnings_reach_the_file_not_the_terminal(
    tmp_path: Path, restored_loggers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = flower_logs_to(tmp_path / "logs" / "flower.log")

    logging.getLogger("flwr").warning("DEPRECATED FEATURE: run_simulation")
    logging.getLogger("ray").info("Started a local Ray instance")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Tip: In future versions of Ray", FutureWarning, stacklevel=1)

    out, err = capsys.readouterr()
    text = path.read_text()
    assert (out, err) == ("", "")
    for name in FLOWER_LOGGERS:  # Flower's own console handler is gone, nothing propagates
        logger = logging.getLogger(name)
        assert [type(h) for h in logger.handlers] == [logging.FileHandler] and not logger.propagate
    assert "WARNING flwr: DEPRECATED FEATURE" in text
    assert "INFO ray: Started a local Ray instance" in text
    assert "FutureWarning: Tip: In future versions of Ray" in text
