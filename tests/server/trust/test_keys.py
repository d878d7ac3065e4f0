"""Server keys: 2-of-3 root, rotation signed by old and new thresholds, offline signing,
revocation — and an agent that trusted root v1 following v1 -> v2 -> v3 while refusing
metadata signed only by revoked keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata
from typer.testing import CliRunner

from agent import Agent
from edgeops.errors import ConfigError
from edgeops.messages import Command
from server.trust import keys as tuf_keys
from server.trust.repository import TufRepository, init_repository
from tests.agent.ota.support import (
    ControlledRepository,
    OtaSetup,
    RepoServer,
    active_model_sha,
    make_setup,
    probe,
)

pytestmark = [pytest.mark.ota]


def test_init_makes_a_two_of_three_root_with_separate_role_keys(tmp_path: Path) -> None:
    init_repository(tmp_path / "tuf")
    repo = TufRepository(tmp_path / "tuf")

    listing = tuf_keys.list_keys(repo)

    assert listing["roles"]["root"]["threshold"] == 2
    assert len(listing["roles"]["root"]["keyids"]) == 3
    role_keys = [set(listing["roles"][r]["keyids"]) for r in ("root", "targets", "snapshot", "timestamp")]
    assert all(not (a & b) for i, a in enumerate(role_keys) for b in role_keys[i + 1 :])
    root = Metadata.from_file(str(repo.metadata_dir / "1.root.json"))
    assert len(root.signatures) == 3
    repo.verify()


def test_rotation_without_enough_local_root_keys_needs_offline_signing(tmp_path: Path) -> None:
    init_repository(tmp_path / "tuf")
    repo = TufRepository(tmp_path / "tuf")
    offline = tmp_path / "offline"
    offline.mkdir()
    for path in repo.keys_dir.glob("root*.pem"):
        shutil.move(path, offline / path.name)

    with pytest.raises(ConfigError, match="offline"):
        tuf_keys.rotate_key(repo, "targets")
    exported = tuf_keys.rotate_key(repo, "targets", offline_out=tmp_path / "root-v2.json")
    assert exported["installed"] is False
    # One offline signature is below the old threshold: import refuses.
    tuf_keys.sign_root_file(tmp_path / "root-v2.json", offline / "root.pem")
    with pytest.raises(Exception, match="threshold"):
        tuf_keys.import_root(repo, tuf_keys.load_root_file(tmp_path / "root-v2.json"))
    tuf_keys.sign_root_file(tmp_path / "root-v2.json", offline / "root.2.pem")

    version = tuf_keys.import_root(repo, tuf_keys.load_root_file(tmp_path / "root-v2.json"))

    assert version == 2
    repo.verify()  # targets, snapshot, timestamp re-signed under the new root


def test_keys_cli_list_rotate_revoke(tmp_path: Path) -> None:
    from server.app.home import init_home
    from server.cli.keys import app
    from server.config.settings import ServerSettings
    from server.trust.repository import RootKeyCustody

    settings = ServerSettings(home=tmp_path / "server")
    init_home(settings, root_custody=RootKeyCustody())  # a development home: root keys online
    runner = CliRunner()
    home = ["--home", str(settings.home)]

    rotated = runner.invoke(app, ["rotate", *home, "--role", "snapshot", "--json"])
    assert rotated.exit_code == 0, rotated.output
    created = runner.invoke(app, ["create", *home, "--role", "targets", "--json"])
    new_key = json.loads(created.output)["keyid"]
    revoked = runner.invoke(app, ["revoke", *home, "--keyid", new_key[:12], "--json"])
    listing = json.loads(runner.invoke(app, ["list", *home, "--json"]).output)

    assert json.loads(revoked.output)["roles"] == ["targets"]
    assert listing["root_version"] == 4
    assert new_key not in listing["roles"]["targets"]["keyids"]
    assert (settings.tuf_dir / "keys" / "revoked").is_dir()
    TufRepository(settings.tuf_dir).verify()
    # Each change is an entry of the home's audit chain, naming the key.
    from server.db.engine import close_database, open_database
    from server.governance.audit_chain import audit_public_keys, export, verify

    session_factory = open_database(settings.resolved_database_url)
    try:
        with session_factory() as session:
            actions = [(e["action"], e["target"]) for e in export(session)]
            assert verify(session, audit_public_keys(settings.home)).ok
    finally:
        close_database(session_factory)
    assert [a for a, _ in actions] == ["keys.rotate", "keys.create", "keys.revoke"]
    assert actions[2][1] == f"key {new_key[:16]}"


@pytest.fixture
def setup(tmp_path: Path) -> OtaSetup:
    repo = ControlledRepository(tmp_path / "repo")
    server = RepoServer(repo.root_dir).__enter__()
    try:
        yield make_setup(tmp_path, server, repo)
    finally:
        server.__exit__(None, None, None)


@pytest.mark.integration  # a real HTTP server serves the repository
def test_agent_follows_root_v1_to_v3_and_refuses_revoked_keys(setup: OtaSetup) -> None:
    old_root_key = setup.repo.rotate("root")  # v2: signed by old 2-of-3 and new 2-of-3
    old_timestamp_key = setup.repo.rotate("timestamp")  # v3
    target = setup.publish(2)

    agent = Agent(setup.config()).start()
    try:
        agent.handle_command(Command(kind="update", target=target))
        assert agent.wait_for_state("committed", timeout_s=10)
        assert agent.predict(probe()).version == 2
    finally:
        agent.stop(timeout_s=2)
    trusted = Metadata.from_file(str(setup.home / "tuf" / "root.json"))
    assert trusted.signed.version == 3

    # Metadata signed only by revoked keys: a timestamp by the old timestamp key, and a
    # root v4 by the revoked root key plus one current one (below the new threshold).
    target3 = setup.publish(3)
    before = active_model_sha(setup.home)
    timestamp = setup.repo.timestamp
    timestamp.signed.version += 1
    setup.repo.sign_raw(timestamp, old_timestamp_key, "timestamp.json")
    agent = Agent(setup.config()).start()
    try:
        status = agent.handle_command(Command(kind="update", target=target3))
    finally:
        agent.stop(timeout_s=2)
    assert status.state == "update_failed" and "bad signature" in (status.reason or "")
    assert active_model_sha(setup.home) == before

    setup.repo.root.signed.version += 1
    setup.repo.write_root([old_root_key, setup.repo.root_signers[1]])
    setup.repo.publish()
    agent = Agent(setup.config()).start()
    try:
        status = agent.handle_command(Command(kind="update", target=target3))
    finally:
        agent.stop(timeout_s=2)
    assert status.state == "update_failed" and "bad signature" in (status.reason or "")
    assert active_model_sha(setup.home) == before
