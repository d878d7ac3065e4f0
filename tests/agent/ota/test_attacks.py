"""One test per TUF attack class, through the real agent, its real ngclient updater and fetcher,
against a repository and an HTTP server we control. Each attack is refused with a specific
reason, and the running model is untouched (same target, same bytes, same predictions)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Timestamp

from agent import Agent
from edgeops.messages import Command, DeviceStatus
from tests.agent.ota.support import (
    ControlledRepository,
    OtaSetup,
    RepoServer,
    active_model_sha,
    endless,
    make_setup,
    probe,
    serve_bytes,
    trickle,
)

pytestmark = [pytest.mark.ota, pytest.mark.attacks, pytest.mark.integration]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[OtaSetup]:
    repo = ControlledRepository(tmp_path / "repo")
    with RepoServer(repo.root_dir) as server:
        yield make_setup(tmp_path, server, repo)


def attempt(setup: OtaSetup, target: str, **config: object) -> DeviceStatus:
    """Run the update of `target` on a fresh agent; check the running model is untouched."""
    before = active_model_sha(setup.home)
    agent = Agent(setup.config(**config)).start()
    try:
        expected = agent.predict(probe()).probabilities.copy()
        status = agent.handle_command(Command(kind="update", target=target))
        prediction = agent.predict(probe())
        assert prediction.version == 1
        assert np.array_equal(prediction.probabilities, expected)
    finally:
        agent.stop(timeout_s=2)
    assert active_model_sha(setup.home) == before
    assert status.state == "update_failed" and status.target == target
    assert status.release == before[0] and status.version == 1
    return status


def test_arbitrary_installation_attacker_bytes_are_refused(setup: OtaSetup) -> None:
    target = setup.publish(2)
    evil = setup.release(3)[1]  # a real model, but not the signed one
    setup.server.behaviours[r"/tuf/targets/"] = serve_bytes(evil[: len(evil)])

    status = attempt(setup, target)

    assert "hash mismatch" in (status.reason or "") or "length mismatch" in (status.reason or "")


def test_endless_data_is_cut_at_the_signed_length(setup: OtaSetup) -> None:
    target = setup.publish(2)
    setup.server.behaviours[r"/tuf/targets/"] = endless

    status = attempt(setup, target)

    assert "length mismatch" in (status.reason or "")


def test_endless_metadata_is_cut_at_the_metadata_cap(setup: OtaSetup) -> None:
    target = setup.publish(2)
    setup.server.behaviours[r"/timestamp\.json$"] = endless

    status = attempt(setup, target)

    assert "repository metadata" in (status.reason or "") and "length" in (status.reason or "")


def test_extraneous_dependencies_unsigned_targets_are_never_fetched(setup: OtaSetup) -> None:
    setup.publish(2)
    extra = setup.repo.targets_dir / "digits" / "9" / ("0" * 64 + ".model.fp32.onnx")
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_bytes(setup.release(9)[1])

    status = attempt(setup, "digits/9/model.fp32.onnx")

    assert "unknown target" in (status.reason or "")
    assert setup.server.target_requests() == []


def test_extraneous_dependencies_release_info_must_name_its_own_target(setup: OtaSetup) -> None:
    release, data = setup.release(2)
    path = "digits/5/model.fp32.onnx"  # signed at a path its release info does not describe
    from tuf.api.metadata import TargetFile

    info = TargetFile.from_data(path, data, ["sha256"])
    info.unrecognized_fields["custom"] = release.to_custom()
    setup.repo.targets.signed.targets[path] = info
    artifact = setup.repo.artifact_path(info)
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(data)
    setup.repo.publish()

    status = attempt(setup, path)

    assert "whose path would be digits/2/" in (status.reason or "")
    assert setup.server.target_requests() == []


def test_fast_forward_metadata_ahead_of_its_signed_version_is_refused(setup: OtaSetup) -> None:
    target = setup.publish(2)
    # The mirror answers the snapshot the timestamp names with a far-future version.
    snapshot = setup.repo.snapshot
    expected = snapshot.signed.version
    snapshot.signed.version = 10_000
    setup.repo.sign_raw(snapshot, setup.repo.signers["snapshot"], f"{expected}.snapshot.json")

    status = attempt(setup, target)

    assert "version mismatch" in (status.reason or "")


def test_indefinite_freeze_expired_metadata_is_refused(setup: OtaSetup) -> None:
    target = setup.publish(2)
    timestamp = setup.repo.timestamp
    timestamp.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    setup.repo.sign_raw(timestamp, setup.repo.signers["timestamp"], "timestamp.json")

    status = attempt(setup, target)

    assert "expired metadata" in (status.reason or "")


def test_malicious_mirror_metadata_signed_by_unknown_keys_is_refused(setup: OtaSetup) -> None:
    target = setup.publish(2)
    attacker = CryptoSigner.generate_ed25519()
    for role, filename in (
        ("targets", f"{setup.repo.targets.signed.version}.targets.json"),
        ("snapshot", f"{setup.repo.snapshot.signed.version}.snapshot.json"),
        ("timestamp", "timestamp.json"),
    ):
        setup.repo.sign_raw(getattr(setup.repo, role), attacker, filename)

    status = attempt(setup, target)

    assert "bad signature" in (status.reason or "")


def test_mix_and_match_targets_from_another_version_are_refused(setup: OtaSetup) -> None:
    old_targets = (setup.repo.metadata_dir / "1.targets.json").read_bytes()
    target = setup.publish(2)
    # Serve the old (validly signed) targets under the version the snapshot names.
    version = setup.repo.targets.signed.version
    (setup.repo.metadata_dir / f"{version}.targets.json").write_bytes(old_targets)

    status = attempt(setup, target)

    assert "hash mismatch" in (status.reason or "") or "version mismatch" in (status.reason or "")


def test_rollback_to_older_signed_metadata_is_refused(setup: OtaSetup) -> None:
    old_timestamp = (setup.repo.metadata_dir / "timestamp.json").read_bytes()
    setup.publish(2)
    # The agent sees the newer metadata once (v2 installs) ...
    agent = Agent(setup.config()).start()
    try:
        newer = setup.publish(3)
        assert agent.handle_command(Command(kind="update", target=newer)).state in (
            "health_window",
            "committed",
        )
        assert agent.wait_for_state("committed", timeout_s=10)
    finally:
        agent.stop(timeout_s=2)
    before = active_model_sha(setup.home)
    # ... then a mirror replays the old timestamp.
    (setup.repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
    agent = Agent(setup.config()).start()
    try:
        status = agent.handle_command(Command(kind="update", target="digits/2/model.fp32.onnx"))
        assert agent.predict(probe()).version == 3
    finally:
        agent.stop(timeout_s=2)
    assert status.state == "update_failed" and "version rollback" in (status.reason or "")
    assert active_model_sha(setup.home) == before


def test_key_compromise_below_threshold_cannot_replace_root(setup: OtaSetup) -> None:
    target = setup.publish(2)
    attacker_targets = CryptoSigner.generate_ed25519()
    # The attacker holds 1 of the 2 root keys needed: a root v2 handing targets to them.
    root: Metadata[Root] = setup.repo.root
    root.signed.revoke_key(setup.repo.signers["targets"].public_key.keyid, "targets")
    root.signed.add_key(attacker_targets.public_key, "targets")
    root.signed.version += 1
    setup.repo.write_root([setup.repo.root_signers[0]])
    setup.repo.signers["targets"] = attacker_targets
    setup.repo.publish()

    status = attempt(setup, target)

    assert "bad signature" in (status.reason or "")


def test_revoked_key_signatures_are_refused(setup: OtaSetup) -> None:
    old_timestamp_key = setup.repo.rotate("timestamp")  # root v2 revokes it
    target = setup.publish(2)
    # The revoked key signs a newer timestamp.
    timestamp: Metadata[Timestamp] = setup.repo.timestamp
    timestamp.signed.version += 1
    setup.repo.sign_raw(timestamp, old_timestamp_key, "timestamp.json")

    status = attempt(setup, target)

    assert "bad signature" in (status.reason or "")


def test_wrong_target_another_signed_artifact_is_refused(setup: OtaSetup) -> None:
    target = setup.publish(2)
    setup.publish(3)
    v3 = setup.repo.artifact_path(setup.repo.targets.signed.targets["digits/3/model.fp32.onnx"])
    setup.server.behaviours[r"/tuf/targets/digits/2/"] = serve_bytes(v3.read_bytes())

    status = attempt(setup, target)

    assert "hash mismatch" in (status.reason or "")


def test_slow_retrieval_is_cut_off(setup: OtaSetup) -> None:
    target = setup.publish(2)
    setup.server.behaviours[r"/tuf/targets/"] = trickle(delay_s=0.05, size=64)

    status = attempt(
        setup,
        target,
        request_timeout_s=0.5,  # also the grace period before the rate check
        download_min_bytes_per_s=50_000.0,
        download_retries=1,
    )

    assert "slow retrieval" in (status.reason or "")


@pytest.mark.parametrize(
    ("requirement", "needle"),
    [
        ({"min_agent_version": "99.0"}, "needs agent >= 99.0"),
        ({"required_opset": 99}, "needs onnx opset 99"),
    ],
)
def test_incompatible_release_is_refused_before_download(
    setup: OtaSetup, requirement: dict, needle: str
) -> None:
    target = setup.publish(2, **requirement)

    status = attempt(setup, target)

    assert "incompatible release" in (status.reason or "") and needle in (status.reason or "")
    assert setup.server.target_requests() == []
