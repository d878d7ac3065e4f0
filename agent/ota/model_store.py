"""A/B model slots on disk, and the active pointer whose atomic swap commits an update.

    <home>/slots/a/model.onnx      the model bytes
    <home>/slots/a/release.json    {"target", "sha256", "length", "release": ReleaseInfo}
    <home>/slots/b/...
    <home>/active.json             {"slot": "a", "target": "...", "previous": "b" | null}

A slot counts as filled only when its `release.json` exists and the model's sha256
matches it. Staging first removes the slot's `release.json`, then writes the model, then
the record, each with write-temp-fsync-rename; the active slot is never written. So a
`kill -9` at any instant leaves either the old pointer with the old model intact, or the
new pointer with a complete new slot.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeops.atomic_io import fsync_dir, read_json, write_bytes_atomic, write_json_atomic
from edgeops.errors import UpdateError
from edgeops.schemas import ReleaseInfo

logger = logging.getLogger(__name__)

SlotName = Literal["a", "b"]
SLOTS: tuple[SlotName, SlotName] = ("a", "b")
MODEL_FILE = "model.onnx"
RECORD_FILE = "release.json"
ACTIVE_FILE = "active.json"


def other_slot(slot: SlotName) -> SlotName:
    return "b" if slot == "a" else "a"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SlotRecord:
    """A filled slot: which release it holds and where its model is."""

    slot: SlotName
    target: str
    sha256: str
    length: int
    release: ReleaseInfo
    model_path: Path


@dataclass(frozen=True)
class ActivePointer:
    slot: SlotName
    target: str
    previous: SlotName | None = None  # the slot that was active before, for rollback


class ModelStore:
    """The slots and pointer under one agent home. Not thread-safe: one updater writes."""

    def __init__(self, home: Path, *, fault: Callable[[str], None] | None = None) -> None:
        self.home = Path(home)
        self._fault = fault or (lambda point: None)

    @property
    def pointer_path(self) -> Path:
        return self.home / ACTIVE_FILE

    def slot_dir(self, slot: SlotName) -> Path:
        return self.home / "slots" / slot

    # Reading -----------------------------------------------------------------------

    def active_pointer(self) -> ActivePointer | None:
        """The committed pointer, or None for a fresh home. A corrupt pointer raises."""
        path = self.pointer_path
        if not path.exists():
            return None
        try:
            raw = read_json(path)
            slot, target, previous = raw["slot"], raw["target"], raw.get("previous")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UpdateError(f"active pointer {path} is corrupt: {err}") from err
        if slot not in SLOTS or previous not in (*SLOTS, None) or not isinstance(target, str):
            raise UpdateError(f"active pointer {path} is corrupt: {raw!r}")
        return ActivePointer(slot=slot, target=target, previous=previous)

    def read_slot(self, slot: SlotName, *, verify: bool = True) -> SlotRecord:
        """The slot's record; with `verify`, also check the model bytes against it."""
        directory = self.slot_dir(slot)
        record_path, model_path = directory / RECORD_FILE, directory / MODEL_FILE
        if not record_path.exists():
            raise UpdateError(f"slot {slot} is empty")
        try:
            raw = read_json(record_path)
            release = ReleaseInfo.model_validate(raw["release"])
            record = SlotRecord(
                slot=slot,
                target=str(raw["target"]),
                sha256=str(raw["sha256"]),
                length=int(raw["length"]),
                release=release,
                model_path=model_path,
            )
        except (OSError, ValueError, KeyError, TypeError) as err:  # ValidationError is a ValueError
            raise UpdateError(f"slot {slot} record is corrupt: {err}") from err
        if verify:
            try:
                data = model_path.read_bytes()
            except OSError as err:
                raise UpdateError(f"slot {slot} model is unreadable: {err}") from err
            if len(data) != record.length or sha256_hex(data) != record.sha256:
                raise UpdateError(
                    f"slot {slot} model is corrupt: sha256 {sha256_hex(data)[:12]}… "
                    f"({len(data)} bytes) does not match {record.sha256[:12]}… ({record.length} bytes)"
                )
        return record

    def staging_slot(self) -> SlotName:
        """The slot an update writes into: never the active one."""
        try:
            pointer = self.active_pointer()
        except UpdateError:
            pointer = None
        return "a" if pointer is None else other_slot(pointer.slot)

    # Writing -----------------------------------------------------------------------

    def clear_slot(self, slot: SlotName) -> None:
        """Mark the slot empty (drop its record first, so a crash never leaves a half slot)."""
        self._refuse_active(slot)
        directory = self.slot_dir(slot)
        try:
            (directory / RECORD_FILE).unlink()
        except FileNotFoundError:
            return  # already empty: no removal to make durable
        fsync_dir(directory)

    def stage(self, slot: SlotName, data: bytes, target: str, release: ReleaseInfo, sha256: str) -> SlotRecord:
        """Write `data` into the inactive `slot` after checking it against `sha256`."""
        actual = sha256_hex(data)
        if actual != sha256:
            raise UpdateError(f"staged bytes of {target} hash to {actual}, expected {sha256}")
        self.clear_slot(slot)
        directory = self.slot_dir(slot)
        write_bytes_atomic(directory / MODEL_FILE, data)
        write_json_atomic(
            directory / RECORD_FILE,
            {
                "target": target,
                "sha256": sha256,
                "length": len(data),
                "release": release.model_dump(mode="json", by_alias=True),
            },
        )
        return SlotRecord(slot, target, sha256, len(data), release, directory / MODEL_FILE)

    def incoming_path(self, slot: SlotName) -> Path:
        """Where a download for `slot` lands before `stage_file` moves it into the slot."""
        return self.slot_dir(slot) / f".{MODEL_FILE}.incoming"

    def stage_file(
        self,
        slot: SlotName,
        source: Path,
        target: str,
        release: ReleaseInfo,
        sha256: str,
        *,
        length: int | None = None,
    ) -> SlotRecord:
        """Move `source` into the inactive `slot` (fsync, rename, then the record).

        Without `length`, the bytes are hashed against `sha256` on the way (streamed, so a
        50 MB model never sits in memory); with it, the caller vouches that it verified
        the file itself just now and only the size is checked."""
        self._refuse_active(slot)
        with open(source, "rb") as handle:
            if length is None:
                digest, length = hashlib.sha256(), 0
                while chunk := handle.read(1024 * 1024):
                    digest.update(chunk)
                    length += len(chunk)
                if digest.hexdigest() != sha256:
                    raise UpdateError(
                        f"staged bytes of {target} hash to {digest.hexdigest()}, expected {sha256}"
                    )
            elif os.fstat(handle.fileno()).st_size != length:
                raise UpdateError(f"staged file of {target} is not {length} bytes long")
            os.fsync(handle.fileno())
        self.clear_slot(slot)
        directory = self.slot_dir(slot)
        self._fault("mid_stage")
        os.replace(source, directory / MODEL_FILE)
        fsync_dir(directory)
        write_json_atomic(
            directory / RECORD_FILE,
            {
                "target": target,
                "sha256": sha256,
                "length": length,
                "release": release.model_dump(mode="json", by_alias=True),
            },
        )
        return SlotRecord(slot, target, sha256, length, release, directory / MODEL_FILE)

    def activate(
        self,
        slot: SlotName,
        *,
        keep_previous: bool = True,
        previous: SlotName | None = None,
    ) -> ActivePointer:
        """Swap the pointer to `slot`: the commit point of an update or rollback.

        `previous` names the rollback slot explicitly (an update passes the slot that
        served before it, so re-running a switch after a crash keeps it)."""
        record = self.read_slot(slot, verify=False)
        if previous is None and keep_previous:
            try:
                current = self.active_pointer()
            except UpdateError:
                current = None
            previous = current.slot if current and current.slot != slot else None
        if previous == slot:
            previous = None
        pointer = ActivePointer(slot=slot, target=record.target, previous=previous)
        write_json_atomic(
            self.pointer_path,
            {"slot": pointer.slot, "target": pointer.target, "previous": pointer.previous},
        )
        return pointer

    def rollback_slot(self) -> SlotName | None:
        """The slot a rollback would switch to, if it still holds a verified model."""
        pointer = self.active_pointer()
        if pointer is None or pointer.previous is None:
            return None
        try:
            self.read_slot(pointer.previous)
        except UpdateError as err:
            logger.warning("previous slot %s cannot be rolled back to: %s", pointer.previous, err)
            return None
        return pointer.previous

    def _refuse_active(self, slot: SlotName) -> None:
        try:
            pointer = self.active_pointer()
        except UpdateError:
            return
        if pointer is not None and pointer.slot == slot:
            raise UpdateError(f"slot {slot} is active and must not be overwritten")
