"""`<home>/update_state.json`: the update state machine's record, written atomically.

The runner saves the record *before* every side effect, so after a power cut the file
names the step that may have been interrupted. A corrupt file is kept aside as
`update_state.json.corrupt` and treated as "no update in progress" (the active pointer
alone still says which complete model serves).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.ota.machine import UpdateRecord
from edgeops.atomic_io import read_json, write_json_atomic
from edgeops.errors import UpdateError

__all__ = ["STATE_FILE", "UpdateJournal"]

logger = logging.getLogger(__name__)

STATE_FILE = "update_state.json"


class UpdateJournal:
    """Load and save the one update record of an agent home."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / STATE_FILE

    def load(self) -> UpdateRecord | None:
        if not self.path.exists():
            return None
        try:
            return UpdateRecord.from_json(read_json(self.path))
        except (OSError, ValueError, UpdateError) as err:
            logger.error("%s is unreadable (%s); setting it aside", self.path, err)
            os.replace(self.path, self.path.with_name(STATE_FILE + ".corrupt"))
            return None

    def save(self, record: UpdateRecord) -> None:
        write_json_atomic(self.path, record.to_json())
