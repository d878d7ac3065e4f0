"""The agent's status says how the release it names as `target` arrived (issue 17): a real
agent updating from a real TUF repository over HTTP, no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import Agent
from edgeops.messages import Command, TransferInfo
from tests.agent.ota.support import ControlledRepository, RepoServer, make_setup

pytestmark = [pytest.mark.ota, pytest.mark.integration]


def test_the_status_reports_the_transfer_of_its_target_only(tmp_path: Path) -> None:
    repo = ControlledRepository(tmp_path / "repo")
    with RepoServer(repo.root_dir) as server:
        setup = make_setup(tmp_path, server, repo)
        target = setup.publish(2)
        artifact = setup.release(2)[1]
        agent = Agent(setup.config()).start()
        try:
            before = agent.status()
            agent.handle_command(Command(kind="update", target=target))
            assert agent.wait_for_state("committed", timeout_s=20)
            after = agent.status()
            failed = agent.handle_command(Command(kind="update", target="digits/9/model.fp32.onnx"))
        finally:
            agent.stop(timeout_s=2)

    assert before.transfer is None  # nothing downloaded by this process yet
    assert after.target == target
    assert after.transfer == TransferInfo(how="full", bytes_received=len(artifact),
                                          full_bytes=len(artifact))
    # An update that fetched nothing does not borrow the last one's transfer.
    assert failed.state == "update_failed" and failed.target == "digits/9/model.fp32.onnx"
    assert failed.transfer is None
