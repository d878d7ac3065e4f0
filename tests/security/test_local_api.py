"""Issue 16 item 7: the agent's local predict API, attacked from the same device.

Every process on the device, and every web page its browser opens, reaches 127.0.0.1. Each
test sends the request such a caller can send (no token, a guessed token, a cross-site
"simple" POST, a rebound DNS name), then shows it is refused; the last ones show that a
flood of refused requests cannot move the health window that decides a rollback, and that
the application holding the token is served as before.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import Agent, AgentConfig
from agent.api_auth import TOKEN_FILE
from edgeops.errors import ConfigError
from edgeops.messages import Command
from edgeops.schemas import HealthPolicy
from tests.agent.ota.support import ControlledRepository, OtaSetup, RepoServer, make_setup
from tests.agent.support import (
    NUM_FEATURES,
    build_model,
    install_model,
    make_release,
    model_weights,
)

pytestmark = [pytest.mark.security, pytest.mark.integration]

PREDICT_BODY = json.dumps({"inputs": np.full((1, NUM_FEATURES), 3.0).tolist()}).encode()
BAD_INPUTS = json.dumps({"inputs": [[1.0, 2.0]]}).encode()  # wrong shape: a predict error


def config_for(home: Path, **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = dict(
        home=home,
        device_id="api-dev",
        server_url="http://127.0.0.1:9",
        broker_port=9,  # nothing listens: the local API needs no broker
        http_port=0,
        telemetry_interval_s=3600,
    )
    values.update(overrides)
    return AgentConfig(**values)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    weights = model_weights(1)
    install_model(tmp_path / "home", make_release(1, weights), build_model(weights))
    agent = Agent(config_for(tmp_path / "home")).start()
    try:
        yield agent
    finally:
        agent.stop(timeout_s=2)


def token_of(agent: Agent) -> str:
    return agent.config.api_token_path.read_text().strip()


def call(
    agent: Agent, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    """One request to the agent's API with exactly `headers` (Host defaults to its own)."""
    assert agent.http_url is not None
    host, port = agent.http_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": f"{host}:{port}", **{k.replace("_", "-"): v for k, v in headers.items()}}
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}"), response
    finally:
        conn.close()


def authorized(agent: Agent) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_of(agent)}", "Content_Type": "application/json"}


def test_the_token_file_is_private_and_a_world_readable_one_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = config_for(home)
    agent = Agent(config).start()
    agent.stop(timeout_s=2)
    assert stat.S_IMODE(os.stat(home / TOKEN_FILE).st_mode) == 0o600
    assert len(config.api_token_path.read_text().strip()) >= 32

    os.chmod(home / TOKEN_FILE, 0o644)  # the attack: a token any local user can read

    with pytest.raises(ConfigError, match="readable or writable by every user"):
        Agent(config).start()


@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_a_request_without_a_token_is_401(agent: Agent, path: str) -> None:
    status, body, response = call(
        agent, "POST", path, PREDICT_BODY, Content_Type="application/json"
    )

    assert status == 401 and "token" in body["error"]
    assert response.getheader("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("scheme", ["Bearer not-the-token", "Basic YWRtaW46YWRtaW4=", "Bearer"])
def test_a_wrong_token_is_401(agent: Agent, scheme: str) -> None:
    status, _, _ = call(
        agent,
        "POST",
        "/predict",
        PREDICT_BODY,
        Authorization=scheme,
        Content_Type="application/json",
    )

    assert status == 401


def test_a_cross_site_simple_post_is_refused(agent: Agent) -> None:
    # What a page on another site can make a browser send with no preflight: text/plain
    # (or a form) with that site's Origin. Even with the token it would not be served.
    page = {"Origin": "http://evil.example", "Content_Type": "text/plain"}

    refused = [
        call(agent, "POST", "/predict", PREDICT_BODY, **page)[0],
        call(
            agent,
            "POST",
            "/feedback",
            PREDICT_BODY,
            **{**page, "Content_Type": "application/x-www-form-urlencoded"},
        )[0],
        call(agent, "POST", "/predict", PREDICT_BODY, **{**authorized(agent), **page})[0],
        call(agent, "POST", "/predict", PREDICT_BODY, **{**authorized(agent), "Origin": "null"})[0],
        call(
            agent,
            "POST",
            "/predict",
            PREDICT_BODY,
            **{**authorized(agent), "Content_Type": "text/plain"},
        )[0],
    ]

    assert refused == [403, 403, 403, 403, 415]


@pytest.mark.parametrize("host", ["evil.example", "attacker.example:{port}", "127.0.0.1:1", ""])
def test_a_foreign_host_is_refused(agent: Agent, host: str) -> None:
    # DNS rebinding: evil.example now resolves to 127.0.0.1, so the browser lets the page
    # read the answers, but it still sends Host: evil.example.
    assert agent.http_url is not None
    host = host.format(port=agent.http_url.rsplit(":", 1)[1])

    read = call(agent, "GET", "/status", Host=host)[0]
    predicted = call(
        agent, "POST", "/predict", PREDICT_BODY, **{**authorized(agent), "Host": host}
    )[0]

    assert (read, predicted) == (421, 421)


def test_authorized_requests_are_served(agent: Agent) -> None:
    assert agent.http_url is not None
    port = agent.http_url.rsplit(":", 1)[1]

    status, prediction, _ = call(agent, "POST", "/predict", PREDICT_BODY, **authorized(agent))
    labelled, _, _ = call(
        agent,
        "POST",
        "/feedback",
        json.dumps({"prediction_id": prediction["prediction_id"], "label": 1}).encode(),
        **{**authorized(agent), "Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
    )
    read = call(agent, "GET", "/status")[0]

    assert (status, labelled, read) == (200, 200, 200)
    assert prediction["version"] == 1


@pytest.fixture
def ota(tmp_path: Path) -> Iterator[OtaSetup]:
    repo = ControlledRepository(tmp_path / "repo")
    with RepoServer(repo.root_dir) as server:
        yield make_setup(tmp_path, server, repo)


def test_a_flood_of_unauthenticated_bad_requests_cannot_force_a_rollback(ota: OtaSetup) -> None:
    # A healthy v2 in its health window, which rolls back on any rise of the error rate.
    policy = HealthPolicy(window_s=1.5, min_samples=0, max_error_rate_increase=0.05)
    target = ota.publish(2, health=policy)
    agent = Agent(
        ota.config(
            http_port=0, health_window_s=None, health_min_samples=None, telemetry_interval_s=3600
        )
    ).start()
    try:
        assert agent.handle_command(Command(kind="update", target=target)).state == "health_window"

        # The attack: a local process without the token floods predict with bad inputs.
        answers = {
            call(agent, "POST", "/predict", BAD_INPUTS, Content_Type="application/json")[0]
            for _ in range(60)
        }

        assert agent.wait_for_state("committed", timeout_s=15), agent.status()
        untouched_window = agent.flush_telemetry()  # None: no prediction, no error recorded
    finally:
        agent.stop(timeout_s=2)
    assert answers == {401}
    assert agent.active_version == 2 and untouched_window is None
