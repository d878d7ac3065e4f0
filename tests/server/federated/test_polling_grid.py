"""PollingGrid keeps Flower's send_and_receive contract (push, then pull until every message
has a reply or the timeout has passed) with its own poll interval."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from server.federated.polling_grid import PollingGrid

pytestmark = [pytest.mark.federated]


class SlowRepliesGrid:
    """A fake inner grid: the reply to message i shows up at pull number `ready_at[i]`
    (never, if None); it records every call."""

    def __init__(self, ready_at: list[int | None]) -> None:
        self.ready_at = ready_at
        self.pulls = 0
        self.calls: list[str] = []

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        self.calls.append("push")
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        wanted = set(message_ids)
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
            for i, at in enumerate(self.ready_at)
            if at is not None and at == self.pulls and f"m{i}" in wanted
        ]

    def get_node_ids(self) -> list[int]:
        self.calls.append("get_node_ids")
        return [7, 8]


def test_it_returns_as_soon_as_every_message_has_a_reply() -> None:
    inner = SlowRepliesGrid([1, 3, 2])
    grid = PollingGrid(inner, poll_interval_s=0.01)  # type: ignore[arg-type]

    started = time.monotonic()
    replies = list(grid.send_and_receive(["a", "b", "c"], timeout=30))

    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert inner.pulls == 3
    assert time.monotonic() - started < 1.0


def test_a_missing_reply_ends_the_wait_at_the_timeout_not_a_poll_later() -> None:
    inner = SlowRepliesGrid([1, None])
    grid = PollingGrid(inner, poll_interval_s=0.2)  # type: ignore[arg-type]

    started = time.monotonic()
    replies = list(grid.send_and_receive(["a", "b"], timeout=0.3))
    waited = time.monotonic() - started

    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.3 <= waited < 0.45  # Flower's deployment grid would sleep a fixed 3 s


def test_everything_else_goes_to_the_wrapped_grid() -> None:
    inner = SlowRepliesGrid([])
    grid = PollingGrid(inner)  # type: ignore[arg-type]

    assert list(grid.get_node_ids()) == [7, 8]
    assert inner.calls == ["get_node_ids"]
    with pytest.raises(ValueError):
        PollingGrid(inner, poll_interval_s=0)  # type: ignore[arg-type]
