"""Issue 16 item 9: an agent refuses a release older than the one it runs.

An old release stays validly signed, so TUF alone lets whoever can send a device a command
(a broker or server account, a replayed command) put a known-bad model back. The attack is
a normal update command naming the older target; only an explicit rollback command, the
one the operator sends on purpose, installs it. A real agent, its real ngclient updater and
an HTTP server serving a repository we control.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import Agent
from edgeops.messages import Command, decode, encode
from tests.agent.ota.support import (
    ControlledRepository,
    OtaSetup,
    RepoServer,
    active_model_sha,
    make_setup,
    probe,
)

pytestmark = [pytest.mark.security, pytest.mark.ota, pytest.mark.integration]


@pytest.fixture
def on_v2(tmp_path: Path) -> Iterator[tuple[OtaSetup, str]]:
    """An agent home that runs v2 (committed), with v1 still signed; yields v1's target."""
    repo = ControlledRepository(tmp_path / "repo")
    with RepoServer(repo.root_dir) as server:
        setup = make_setup(tmp_path, server, repo)  # v1 installed at the factory
        v1, v2 = setup.publish(1), setup.publish(2)
        agent = Agent(setup.config()).start()
        try:
            agent.handle_command(Command(kind="update", target=v2))
            assert agent.wait_for_version(2, timeout_s=10), agent.status()
            assert agent.wait_for_state("committed", timeout_s=10), agent.status()
        finally:
            agent.stop(timeout_s=2)
        yield setup, v1


def test_a_normal_update_to_an_older_release_is_refused(on_v2: tuple[OtaSetup, str]) -> None:
    setup, v1 = on_v2
    before = active_model_sha(setup.home)
    agent = Agent(setup.config()).start()
    try:
        # The attack: a validly signed but older release, in an ordinary update command
        # as it arrives over MQTT.
        command = decode(Command, encode(Command(kind="update", target=v1)))
        status = agent.handle_command(command)
        served = agent.predict(probe()).version
    finally:
        agent.stop(timeout_s=2)

    assert status.state == "update_failed" and status.target == v1
    assert "downgrade refused" in (status.reason or "") and "v2" in (status.reason or "")
    assert (served, status.version) == (2, 2)
    assert active_model_sha(setup.home) == before


def test_an_explicit_rollback_command_installs_the_older_release(
    on_v2: tuple[OtaSetup, str],
) -> None:
    setup, v1 = on_v2
    agent = Agent(setup.config()).start()
    try:
        wire = encode(Command(kind="update", target=v1, allow_downgrade=True))
        status = agent.handle_command(decode(Command, wire))
        assert agent.wait_for_state("committed", timeout_s=10), agent.status()
        served = agent.predict(probe()).version
    finally:
        agent.stop(timeout_s=2)

    assert b'"allow_downgrade":true' in wire
    assert status.state in ("health_window", "committed") and status.target == v1
    assert served == 1
    assert active_model_sha(setup.home)[0] == v1


def test_a_newer_release_and_a_normal_command_need_no_flag(on_v2: tuple[OtaSetup, str]) -> None:
    setup, _ = on_v2
    v3 = setup.publish(3)
    agent = Agent(setup.config()).start()
    try:
        status = agent.handle_command(Command(kind="update", target=v3))
        assert agent.wait_for_version(3, timeout_s=10), agent.status()
    finally:
        agent.stop(timeout_s=2)

    assert status.state in ("health_window", "committed")
    assert b"allow_downgrade" not in encode(Command(kind="update", target=v3))
