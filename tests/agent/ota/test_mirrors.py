"""Untrusted mirrors (issue 17): `edgeops release mirror` writes the repository in the
static layout, a real nginx serves it, and agents try their mirrors in order, then the
server. A mirror serving stale, tampered or missing files is refused and the next is used;
when every source fails the update fails and the active model keeps serving."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent import Agent, AgentConfig, init_agent_home
from edgeops.exit_codes import ExitCode
from edgeops.messages import Command, DeviceStatus
from server.pipeline.publishing import PublishedRelease
from server.trust.repository import TufRepository
from tests.agent.ota.mirrors_support import Nginx, ServerHome, nginx, server_home
from tests.agent.ota.support import active_model_sha, ota_config, probe
from tests.cli_support import run_edgeops
from tests.server.helpers import free_port

pytestmark = [pytest.mark.ota, pytest.mark.integration]
__all__ = ["nginx"]  # the fixture, imported for the tests below

DEAD_SERVER = f"http://127.0.0.1:{free_port()}"  # nothing listens: the server is down


def agent_config(home: Path, *mirrors: str) -> AgentConfig:
    return ota_config(home, DEAD_SERVER, mirrors=mirrors, download_retries=1)


def new_agent_home(tmp_path: Path, server: ServerHome) -> Path:
    home = tmp_path / "device"
    init_agent_home(home, agent_config(home), server.trusted_root)
    return home


def update(home: Path, target: str, *mirrors: str) -> DeviceStatus:
    """One update of `target` by a fresh agent using `mirrors`; waits for its commit."""
    agent = Agent(agent_config(home, *mirrors)).start()
    try:
        status = agent.handle_command(Command(kind="update", target=target))
        if status.state == "health_window":
            assert agent.wait_for_state("committed", timeout_s=10)
            status = agent.status()
        return status
    finally:
        agent.stop(timeout_s=2)


def trusted_timestamp_version(home: Path) -> int:
    version: int = json.loads((home / "tuf" / "timestamp.json").read_text())["signed"]["version"]
    return version


def artifact_files(mirror: Path, version: int | None = None) -> list[Path]:
    """The artifacts in `mirror` (of release `version`: the model and any other signed
    file of that release, such as a compressed copy)."""
    folder = mirror / "targets" / ("." if version is None else f"digits/{version}")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def model_file(release: PublishedRelease) -> str:
    return f"digits/{release.version}/{release.artifact_sha256}.model.int8.onnx"


@pytest.fixture
def server(tmp_path: Path) -> ServerHome:
    return server_home(tmp_path)


# Working mirrors -------------------------------------------------------------------------


def test_an_agent_with_only_a_mirror_updates_from_it(
    tmp_path: Path, server: ServerHome, nginx: Nginx
) -> None:
    v1 = server.publish(seed=1)
    report = server.mirror(nginx.root / "m1")
    home = new_agent_home(tmp_path, server)

    status = update(home, v1.target_path, nginx.mirror_url("m1"))

    assert status.state == "committed" and status.release == v1.target_path
    assert active_model_sha(home) == (v1.target_path, v1.artifact_sha256)
    assert model_file(v1) in report["copied_targets"]
    requests = nginx.requests()
    assert any(line.startswith("GET /m1/targets/digits/1/") for line in requests)
    assert "GET /m1/metadata/timestamp.json HTTP/1.1" in requests


def test_mirror_writes_the_static_layout_and_syncs_incrementally(
    tmp_path: Path, server: ServerHome
) -> None:
    v1 = server.publish(seed=1)
    mirror = tmp_path / "mirror"
    first = server.mirror(mirror)
    again = server.mirror(mirror)
    v2 = server.publish(seed=2)

    third = server.mirror(mirror)

    tuf = server.settings.tuf_dir / "metadata"
    timestamp = json.loads((tuf / "timestamp.json").read_text())["signed"]
    snapshot_name = f"{timestamp['meta']['snapshot.json']['version']}.snapshot.json"
    for name in ("1.root.json", "root.json", "timestamp.json", snapshot_name):
        assert (mirror / "metadata" / name).read_bytes() == (tuf / name).read_bytes()
    signed = {entry.path for entry in TufRepository(server.settings.tuf_dir).targets()}
    assert len(artifact_files(mirror)) == len(signed)
    assert {model_file(v1), model_file(v2)} <= {
        str(p.relative_to(mirror / "targets")) for p in artifact_files(mirror)
    }
    assert model_file(v1) in first["copied_targets"] and len(first["copied_metadata"]) == 5
    assert again["copied_targets"] == [] and again["copied_metadata"] == []
    assert again["present_targets"] == first["copied_targets"]
    assert model_file(v2) in third["copied_targets"]
    assert third["present_targets"] == first["copied_targets"]
    assert third["copied_metadata"][-1] == "timestamp.json"  # the commit point goes last
    assert third["targets_version"] == v2.targets_version


# Bad mirrors are refused and the next is used ----------------------------------------------


@pytest.mark.attacks
def test_a_stale_mirror_is_refused_and_cannot_roll_back_trusted_metadata(
    tmp_path: Path, server: ServerHome, nginx: Nginx, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = server.publish(seed=1)
    server.mirror(nginx.root / "stale")  # an old copy, taken before the next publish
    v2 = server.publish(seed=2)
    server.mirror(nginx.root / "good")
    home = new_agent_home(tmp_path, server)
    assert update(home, v1.target_path, nginx.mirror_url("good")).state == "committed"
    seen = trusted_timestamp_version(home)

    # Only the stale mirror (and the server down): refused, nothing trusted moves back.
    refused = update(home, v2.target_path, nginx.mirror_url("stale"))
    assert refused.state == "update_failed"
    assert "version rollback" in (refused.reason or "")
    assert trusted_timestamp_version(home) == seen
    assert active_model_sha(home) == (v1.target_path, v1.artifact_sha256)

    # The stale mirror first, a good one next: the good one is used.
    with caplog.at_level(logging.WARNING, logger="agent.ota.updater"):
        status = update(home, v2.target_path, nginx.mirror_url("stale"), nginx.mirror_url("good"))

    assert status.state == "committed" and status.release == v2.target_path
    assert active_model_sha(home) == (v2.target_path, v2.artifact_sha256)
    assert any("mirror " + nginx.mirror_url("stale") in r.message and "version rollback"
               in r.message for r in caplog.records)
    assert trusted_timestamp_version(home) == seen


@pytest.mark.attacks
def test_a_mirror_with_a_tampered_artifact_is_refused_and_the_next_serves_it(
    tmp_path: Path, server: ServerHome, nginx: Nginx, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = server.publish(seed=1)
    server.mirror(nginx.root / "evil")
    server.mirror(nginx.root / "good")
    for artifact in artifact_files(nginx.root / "evil", v1.version):
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0x01  # one flipped bit, same length
        artifact.write_bytes(bytes(data))
    home = new_agent_home(tmp_path, server)

    with caplog.at_level(logging.WARNING, logger="agent.ota.updater"):
        status = update(home, v1.target_path, nginx.mirror_url("evil"), nginx.mirror_url("good"))

    assert status.state == "committed"
    assert active_model_sha(home) == (v1.target_path, v1.artifact_sha256)  # the signed hash
    assert any("evil" in r.message and "hash mismatch" in r.message for r in caplog.records)
    requests = nginx.requests()
    assert any(line.startswith("GET /evil/targets/digits/1/") for line in requests)
    assert any(line.startswith("GET /good/targets/digits/1/") for line in requests)
    assert not list((home / "downloads" / "partial").glob("*.part"))


@pytest.mark.attacks
@pytest.mark.parametrize("missing", ["timestamp", "targets metadata", "artifacts"])
def test_a_mirror_missing_files_is_passed_over(
    tmp_path: Path, server: ServerHome, nginx: Nginx, missing: str
) -> None:
    v1 = server.publish(seed=1)
    server.mirror(nginx.root / "holey")
    server.mirror(nginx.root / "good")
    targets_json = f"metadata/{v1.targets_version}.targets.json"
    relative = {"timestamp": "metadata/timestamp.json", "targets metadata": targets_json,
                "artifacts": "targets"}[missing]
    gone = nginx.root / "holey" / relative
    assert gone.exists()
    shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    home = new_agent_home(tmp_path, server)

    status = update(home, v1.target_path, nginx.mirror_url("holey"), nginx.mirror_url("good"))

    assert status.state == "committed"
    assert active_model_sha(home) == (v1.target_path, v1.artifact_sha256)
    assert any(line.startswith("GET /holey/") for line in nginx.requests())


@pytest.mark.attacks
def test_when_every_source_fails_the_update_fails_and_the_model_keeps_serving(
    tmp_path: Path, server: ServerHome, nginx: Nginx
) -> None:
    v1 = server.publish(seed=1)
    server.mirror(nginx.root / "good")
    home = new_agent_home(tmp_path, server)
    assert update(home, v1.target_path, nginx.mirror_url("good")).state == "committed"
    v2 = server.publish(seed=2)
    server.mirror(nginx.root / "evil")
    for artifact in artifact_files(nginx.root / "evil"):
        artifact.write_bytes(artifact.read_bytes()[::-1])
    before = active_model_sha(home)
    agent = Agent(agent_config(home, nginx.mirror_url("good"), nginx.mirror_url("evil"))).start()
    try:
        expected = agent.predict(probe()).probabilities.copy()

        status = agent.handle_command(Command(kind="update", target=v2.target_path))

        prediction = agent.predict(probe())
    finally:
        agent.stop(timeout_s=2)
    assert status.state == "update_failed" and status.target == v2.target_path
    reason = status.reason or ""
    # good is stale for v2 (no such target), evil's artifact is refused, the server is down.
    assert "every repository source failed" in reason
    assert f"mirror {nginx.mirror_url('good')}: unknown target" in reason
    assert f"server {DEAD_SERVER}/tuf/" in reason and "download failed" in reason
    assert prediction.version == v1.version
    assert np.array_equal(prediction.probabilities, expected)
    assert active_model_sha(home) == before


# The command's errors -------------------------------------------------------------------------


def test_mirror_refuses_a_missing_home_and_an_unwritable_folder(
    tmp_path: Path, server: ServerHome
) -> None:
    server.publish(seed=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    no_home = run_edgeops("release", "mirror", "--home", str(tmp_path / "nowhere"),
                          "--to", str(tmp_path / "m"))
    not_a_folder = run_edgeops("release", "mirror", "--home", str(server.home),
                               "--to", str(blocker))
    no_to = run_edgeops("release", "mirror", "--home", str(server.home))

    assert no_home.returncode == ExitCode.CONFIG
    assert "is not a server home" in no_home.stderr and "edgeops server init" in no_home.stderr
    assert not_a_folder.returncode == ExitCode.CONFIG
    assert f"cannot create the mirror folder {blocker}" in not_a_folder.stderr
    assert no_to.returncode == ExitCode.USAGE and "--to" in no_to.stderr


def test_mirror_refuses_an_artifact_the_store_holds_wrongly(
    tmp_path: Path, server: ServerHome
) -> None:
    v1 = server.publish(seed=1)
    blob = server.settings.artifacts_dir / "sha256" / v1.artifact_sha256
    blob.chmod(0o644)
    blob.write_bytes(b"not the signed model")

    done = run_edgeops("release", "mirror", "--home", str(server.home), "--to",
                       str(tmp_path / "m"))

    assert done.returncode == ExitCode.TRUST
    assert "is not the signed artifact" in done.stderr
    assert not (tmp_path / "m" / "metadata" / "timestamp.json").exists()


def test_mirror_help_teaches_what_it_writes() -> None:
    done = run_edgeops("release", "mirror", "--help")

    assert done.returncode == 0
    for words in ("--to", "static", "timestamp.json", "mirrors"):
        assert words in done.stdout

