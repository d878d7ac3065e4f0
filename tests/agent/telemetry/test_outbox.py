"""The agent's SQLite outbox and the link's reconnect backoff: pure units, no broker."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.telemetry.mqtt_link import Backoff
from agent.telemetry.outbox import Outbox

pytestmark = [pytest.mark.telemetry]


def test_messages_come_out_in_order_and_leave_only_when_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    for i in range(5):
        outbox.put(f"m{i}", "t", b"x" * i, now=float(i))

    first = outbox.pending(3)
    assert [item.message_id for item in first] == ["m0", "m1", "m2"]
    assert [i.message_id for i in outbox.pending(3, exclude={"m0", "m1"})] == ["m2", "m3", "m4"]
    assert outbox.remove(["m0", "m2", "unknown"]) == 2
    assert [item.message_id for item in outbox.pending(10)] == ["m1", "m3", "m4"]
    assert (outbox.stats().messages, outbox.stats().bytes) == (3, 1 + 3 + 4)


def test_a_repeated_message_id_is_stored_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.put("same", "t", b"a", now=0)
    outbox.put("same", "t", b"a", now=1)
    assert len(outbox) == 1


def test_the_outbox_survives_a_reopen_with_its_drop_count(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_messages=3)
    for i in range(5):
        outbox.put(f"m{i}", "t", b"x", now=0)
    outbox.close()  # (a SIGKILL leaves the same: committed rows are in the WAL)

    reopened = Outbox(tmp_path / "outbox.db", max_messages=3)
    assert [item.message_id for item in reopened.pending(10)] == ["m2", "m3", "m4"]
    assert reopened.stats().dropped == 2


@pytest.mark.parametrize(
    ("max_messages", "max_bytes", "sizes", "kept", "dropped"),
    [
        (3, 10_000, [1, 1, 1, 1, 1], ["m2", "m3", "m4"], 2),  # by count: oldest first
        (100, 10, [4, 4, 4], ["m1", "m2"], 1),  # by bytes
        (100, 10, [2, 2, 9], ["m2"], 2),  # a big message pushes out several
    ],
)
def test_when_full_the_oldest_are_dropped_and_counted(
    tmp_path: Path, max_messages: int, max_bytes: int, sizes: list[int], kept: list[str],
    dropped: int,
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_messages=max_messages, max_bytes=max_bytes)
    reported = sum(outbox.put(f"m{i}", "t", b"x" * size, now=0) for i, size in enumerate(sizes))

    assert [item.message_id for item in outbox.pending(100)] == kept
    assert reported == outbox.stats().dropped == dropped


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    bases = [1, 2, 4, 8, 8, 8]
    assert all(base / 2 <= delay <= base for delay, base in zip(delays, bases))
    assert len({round(d, 6) for d in delays[3:]}) == 3  # jittered, not lockstep
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_two_agents_do_not_reconnect_in_lockstep() -> None:
    a, b = Backoff(1.0, 30.0, random.Random(1)), Backoff(1.0, 30.0, random.Random(2))
    assert [a.next_delay() for _ in range(5)] != [b.next_delay() for _ in range(5)]
