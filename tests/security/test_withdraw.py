"""Issue 16 item 9: a release can be withdrawn.

A release found bad after it shipped stays validly signed until it is removed from the
signed targets: anyone who can send a device an update command (even an explicit rollback)
could install it again. `edgeops release withdraw` removes it (new targets, snapshot and
timestamp), marks it in the registry so no rollout sends it again, and a real agent told to
install it, from the real server over HTTP, fails verification.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from agent import Agent, AgentConfig, init_agent_home
from edgeops.errors import RegistryError
from edgeops.messages import Command
from server.app.build import build_app
from server.app.home import init_home
from server.cli.release import app as release_cli
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.db.tables import Rollout
from server.pipeline.publishing import PublishedRelease
from server.pipeline.steps import publish_release, start_rollout
from server.pipeline.withdrawal import withdraw_release
from server.registry.aliases import CHAMPION, set_alias
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Registry, ReleaseWithdrawnError
from server.rollouts.store import RolloutSpec
from server.trust.repository import TufRepository
from tests.server.helpers import live_server, make_package

pytestmark = [pytest.mark.security, pytest.mark.integration]


@dataclass
class Published:
    settings: ServerSettings
    factory: sessionmaker
    v1: PublishedRelease
    v2: PublishedRelease

    def run_cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            release_cli, ["withdraw", *args, "--home", str(self.settings.home)]
        )
        return result.exit_code, result.output + str(result.exception or "")

    def signed(self) -> set[str]:
        return {t.path for t in TufRepository(self.settings.tuf_dir).targets()}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("withdraw") / "digits")


@pytest.fixture
def published(tmp_path: Path, package: Path) -> Iterator[Published]:
    """A server home with digits v1 and v2 published (fp32: what the agent runs)."""
    settings = ServerSettings(home=tmp_path / "server", http_port=0)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    try:
        v1 = publish_release(settings, factory, package, "fp32")
        v2 = publish_release(settings, factory, package, "fp32")
        yield Published(settings, factory, v1, v2)
    finally:
        close_database(factory)


def test_a_withdrawn_release_leaves_the_signed_targets_and_is_never_rolled_out(
    published: Published, package: Path
) -> None:
    repo = TufRepository(published.settings.tuf_dir)
    versions_before = repo.targets_version()

    code, output = published.run_cli("2", "--reason", "mislabels class 7", "--json")

    assert code == 0, output
    answer = json.loads(output)
    assert answer["target_path"] == published.v2.target_path and not answer["already_withdrawn"]
    assert published.signed() == {published.v1.target_path}
    assert repo.targets_version() == versions_before + 1 == answer["targets_version"]
    repo.verify()  # targets, snapshot and timestamp re-signed by their keys
    with pytest.raises(ReleaseWithdrawnError, match="withdrawn"):
        start_rollout(published.factory, RolloutSpec(target=published.v2.target_path), "ops")
    # A later publish keeps the withdrawn release's record (it is not an interrupted one).
    publish_release(published.settings, published.factory, package, "fp32")
    registry = Registry(published.factory, ArtifactStore(published.settings.artifacts_dir))
    withdrawn = registry.find_release(published.v2.target_path)
    assert withdrawn.withdrawn_at is not None and withdrawn.withdrawn_reason == "mislabels class 7"
    assert published.run_cli(published.v2.target_path, "--reason", "again")[0] == 0


def test_an_agent_told_to_install_a_withdrawn_release_fails_verification(
    published: Published, tmp_path: Path
) -> None:
    settings = published.settings
    with live_server(build_app(settings, with_fleet=False)) as url:
        config = AgentConfig(
            home=tmp_path / "agent",
            device_id="wd-dev",
            server_url=url,
            broker_port=9,
            health_window_s=0.1,
            health_min_samples=0,
        )
        init_agent_home(config.home, config, TufRepository(settings.tuf_dir).root_bytes())
        agent = Agent(config).start()
        try:
            # The agent has seen targets metadata that lists v2 (it installs v1 from it).
            agent.handle_command(Command(kind="update", target=published.v1.target_path))
            assert agent.wait_for_state("committed", timeout_s=10), agent.status()
            withdraw_release(
                settings,
                published.factory,
                published.v2.target_path,
                reason="vulnerable",
                actor="test",
            )

            # The attack: a command to install the withdrawn release, even as a rollback.
            status = agent.handle_command(
                Command(kind="update", target=published.v2.target_path, allow_downgrade=True)
            )
        finally:
            agent.stop(timeout_s=2)

    assert status.state == "update_failed" and status.target == published.v2.target_path
    assert "not in the signed targets" in (status.reason or "")
    assert agent.active_version == 1


def test_the_champion_and_an_active_rollout_target_need_force(published: Published) -> None:
    target = published.v2.target_path
    with published.factory.begin() as session:
        set_alias(session, "digits", CHAMPION, 2, "test")

    with pytest.raises(RegistryError, match="champion"):
        withdraw_release(published.settings, published.factory, target, reason="r", actor="t")
    with published.factory.begin() as session:
        set_alias(session, "digits", CHAMPION, 1, "test")
        session.add(
            Rollout(
                target=target,
                group_name=None,
                tags=[],
                policy={},
                status="running",
                active_scope="*",
                created_by="test",
            )
        )
    code, output = published.run_cli("2", "--reason", "r")
    assert code != 0 and "active rollout" in output and "--force" in output
    assert target in published.signed()

    forced = withdraw_release(
        published.settings, published.factory, target, reason="r", actor="t", force=True
    )

    assert forced.release.withdrawn_at is not None and target not in published.signed()
