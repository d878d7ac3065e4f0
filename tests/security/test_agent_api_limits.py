"""The agent's local API under slow and deeply nested requests (issue 16, item 3).

Before: a client that sent half a request line and waited held a thread of the agent for
ever, and a body of nested brackets made json raise RecursionError inside the handler, which
dropped the connection with no answer. Now the headers have a deadline, every read an idle
timeout, and too deep a body is a 400.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import Agent, AgentConfig
from agent.http_deadline import HEADER_TIMEOUT_S, DeadlineReader
from tests.agent.support import build_model, install_model, make_release, model_weights
from tests.security.sockets import closed_after

pytestmark = [pytest.mark.security, pytest.mark.integration]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    weights = model_weights(1)
    install_model(tmp_path / "home", make_release(1, weights), build_model(weights))
    config = AgentConfig(
        home=tmp_path / "home",
        device_id="limits-dev",
        server_url="http://127.0.0.1:9",
        broker_port=9,
        http_port=0,
        telemetry_interval_s=3600,  # no broker needed
    )
    agent = Agent(config).start()
    try:
        yield agent
    finally:
        agent.stop(timeout_s=2)


def _address(agent: Agent) -> tuple[str, int]:
    assert agent.http_url is not None
    host, port = agent.http_url.removeprefix("http://").split(":")
    return host, int(port)


def _post(agent: Agent, body: bytes) -> tuple[int, dict[str, str]]:
    host, port = _address(agent)
    token = agent.config.api_token_path.read_text().strip()
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(
            "POST",
            "/predict",
            body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
            },
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the interpreter's recursion limit
        json.dumps({"inputs": json.loads("[" * 500 + "]" * 500)}).encode(),  # parses; no array
    ],
    ids=["100000-deep", "500-deep-inputs"],
)
def test_deeply_nested_json_is_a_400(agent: Agent, body: bytes) -> None:
    status, answer = _post(agent, body)

    assert status == 400, answer
    assert "error" in answer
    assert _post(agent, json.dumps({"inputs": [[1.0] * 64]}).encode())[0] == 200


def test_a_slowloris_connection_is_closed_after_the_header_timeout(agent: Agent) -> None:
    waits = socket.create_connection(_address(agent), timeout=10)
    drips = socket.create_connection(_address(agent), timeout=10)
    waits.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    drips.sendall(b"GET /status HTTP/1.1\r\n")
    stop = threading.Event()

    def drip() -> None:
        try:
            while not stop.wait(0.5):
                drips.sendall(b"X")
        except OSError:
            pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        limit_s = HEADER_TIMEOUT_S + 5
        waited = closed_after(waits, limit_s)
        dripped = closed_after(drips, limit_s)
    finally:
        stop.set()
        dripper.join(5)
        waits.close()
        drips.close()
    assert waited is not None and waited <= HEADER_TIMEOUT_S + 2, "a stalled client is held"
    assert dripped is not None, "a client dripping a header byte every 0.5 s is held"


def test_a_read_with_no_data_times_out_after_the_idle_timeout() -> None:
    ours, theirs = socket.socketpair()
    reader = DeadlineReader(ours, idle_timeout_s=0.2)
    theirs.sendall(b"abc")
    try:
        assert reader.read(3) == b"abc"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            reader.read(1)
        assert time.monotonic() - started < 1.0
    finally:
        reader.close()
        ours.close()
        theirs.close()
