"""Withdraw a release: mark it in the registry, then remove its target, with the deltas and
compressed copy that rebuild it, from the signed targets (new targets, snapshot and
timestamp versions), with an audit entry. Deltas *from* it to later releases stay: a
device that runs it may still take them, and they arrive at releases that are signed.

The order matters for a crash in between: the registry is marked first, so a rerun finds the
mark and finishes the removal; the other order would leave an unsigned, unmarked release,
which the next publish drops as an interrupted one (`drop_unsigned_releases`). After the
removal an agent told to install the release no longer finds it in the targets it verifies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import sessionmaker

from edgeops import ota_delta
from server.config.settings import ServerSettings
from server.governance import audit_chain
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Registry, ReleaseRecord
from server.trust.repository import TufRepository

__all__ = ["WithdrawnRelease", "withdraw_release"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WithdrawnRelease:
    release: ReleaseRecord
    targets_version: int  # the signed targets version without it
    already: bool  # it had been withdrawn before: nothing changed

    def to_json(self) -> dict[str, object]:
        r = self.release
        return {
            "model": r.model,
            "version": r.version,
            "format": r.format,
            "target_path": r.target_path,
            "withdrawn_at": r.withdrawn_at.isoformat() if r.withdrawn_at else None,
            "reason": r.withdrawn_reason,
            "targets_version": self.targets_version,
            "already_withdrawn": self.already,
        }


def withdraw_release(
    settings: ServerSettings,
    session_factory: sessionmaker,
    target_path: str,
    *,
    reason: str,
    actor: str,
    force: bool = False,
) -> WithdrawnRelease:
    """Withdraw the release `target_path` (see the module docstring and
    `Registry.mark_withdrawn` for what is refused without `force`)."""
    registry = Registry(session_factory, ArtifactStore(settings.artifacts_dir))
    repository = TufRepository(settings.tuf_dir)
    with repository.locked():  # no publish drops the release while it is half withdrawn
        before = registry.find_release(target_path)
        release = registry.mark_withdrawn(target_path, reason, force=force)
        entries = repository.targets()
        signed = [
            e.path for e in entries
            if target_path in (e.path, ota_delta.auxiliary_release(e.custom))
        ]  # fmt: skip
        if signed:  # a rerun after a crash, or a withdrawal from before deltas, finds fewer
            targets_version = repository.remove_targets(signed)
        else:
            targets_version = repository.targets_version()
    already = before.withdrawn_at is not None and not signed
    if not already:
        with session_factory.begin() as session:
            audit_chain.append(
                session,
                actor=actor,
                role=None,
                action="release.withdraw",
                resource="release",
                target=f"release {target_path}",
                reason=f"{reason}; removed from targets v{targets_version}"
                + (" (forced)" if force else ""),
            )
    return WithdrawnRelease(release, targets_version, already)
