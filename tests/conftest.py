"""Shared fixtures: a real Mosquitto per test on a free port, and temporary homes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.mosquitto import MosquittoBroker


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto on a free port, stopped after the test."""
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.kill()
