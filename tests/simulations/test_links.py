"""The lossy link relay: every byte arrives, in order; impaired chunks come late."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from simulations.links import FIRST_RTO_S, LinkRelay

pytestmark = pytest.mark.integration


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _round_trips(port: int, messages: list[bytes]) -> tuple[bytes, float]:
    """Send each message and read its echo; the bytes back and the slowest round trip."""
    received, slowest = b"", 0.0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        for message in messages:
            started = time.monotonic()
            conn.sendall(message)
            got = b""
            while len(got) < len(message):
                got += conn.recv(65536)
            received += got
            slowest = max(slowest, time.monotonic() - started)
    return received, slowest


def test_a_clean_link_passes_every_byte_at_once(echo_port: int) -> None:
    relay = LinkRelay("127.0.0.1", echo_port)
    try:
        messages = [bytes([i]) * 1000 for i in range(20)]
        received, slowest = _round_trips(relay.port, messages)
        assert received == b"".join(messages)
        assert slowest < FIRST_RTO_S
        assert relay.delayed_chunks == 0
    finally:
        relay.close()


def test_a_lossy_link_delivers_everything_in_order_but_late(echo_port: int) -> None:
    relay = LinkRelay("127.0.0.1", echo_port, seed=1)
    try:
        relay.impair(loss_pct=30, duration_s=30)
        messages = [f"message {i:03d};".encode() * 50 for i in range(8)]
        received, slowest = _round_trips(relay.port, messages)
        assert received == b"".join(messages)  # TCP over a lossy link loses nothing
        assert relay.delayed_chunks > 0
        assert slowest >= FIRST_RTO_S  # a lost segment waits for the retransmission timeout
    finally:
        relay.close()


def test_a_refused_upstream_closes_the_device_side() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    relay = LinkRelay("127.0.0.1", dead_port)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
            assert conn.recv(10) == b""  # closed, as a refused connection looks to a device
    finally:
        relay.close()
