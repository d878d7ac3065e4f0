"""The participants manifest of a simulated federated run: which devices take part, in order.

The k-th simulated SuperNode plays participant k: it trains on its base partition plus the
train side of that device's own feedback store, and the fleet evaluation groups replies by
the participants' cohorts. The format and its reader live in `edgeops.federated.config`,
because the ClientApp reads the same file; the server writes it here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeops.atomic_io import write_json_atomic
from edgeops.federated.config import Participant, Participants, read_participants

__all__ = ["Participant", "Participants", "read_participants", "write_participants"]

# Readable by the ClientApp's processes (Ray actors, SuperExec children) of the same user.
MANIFEST_FILE_MODE = 0o644


def write_participants(
    path: Path, participants: Sequence[Participant], *, num_partitions: int,
    feedback_until: float | None = None,
) -> Participants:
    """Validate the manifest (ConfigError if it is inconsistent), then write it atomically.

    Returns what was written, as `read_participants(path)` will read it back."""
    manifest = Participants(num_partitions=num_partitions, participants=tuple(participants),
                            feedback_until=feedback_until)
    write_json_atomic(Path(path), manifest.to_json(), mode=MANIFEST_FILE_MODE)
    return manifest
