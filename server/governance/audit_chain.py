"""The tamper-evident audit log: an append-only hash chain of entries, signed anchors of its head.

    append(session, *, actor, role, action, resource, ...) -> AuditEntry   the one way to write
    record(session_factory, actor, action, target, reason, ...) -> int | None   own transaction
    anchor(session, key) -> AuditAnchor          sign the chain head with the server's audit key
    verify(session, public_key) -> AuditVerdict  the first edited, inserted or deleted entry
    verify_records(entries, anchors, keys)       the same over plain records (an export, say)
    export(session, since, until) -> Iterator[dict]   entries with their hashes, for an archive
    prune(session, now, retention_days=, key=)   drop anchored entries past retention; re-anchor
    anchor_hook(settings, session_factory)       the periodic anchoring and pruning of a server

Each entry's `entry_hash` is sha256 over the canonical JSON of its fields and `prev_hash`, the
entry_hash of the entry before it ("0" * 64 for the first). Ids are assigned by `append` under
the chain lock, one after the other, so a gap in ids is a deleted entry. An anchor signs
{entry_id, head_hash, at}: entries deleted from the tail after an anchor show as an anchor
naming an entry that is gone or changed.

What the chain cannot show: someone who can write the database and knows this scheme may
append well-formed entries after the newest anchor. Export the log and keep the anchors'
public key outside the server to close that gap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError, EdgeOpsError, NotFoundError
from server.background.periodic import LifespanHook, periodic
from server.config.settings import ServerSettings
from server.db.tables import AuditAnchor, AuditEntry, as_utc

__all__ = [
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "OUTCOMES",
    "PRUNE_ACTION",
    "RETENTION_FLOOR_DAYS",
    "SERVER_ACTOR",
    "AuditVerdict",
    "anchor",
    "anchor_hook",
    "anchor_if_moved",
    "anchor_payload",
    "append",
    "audit_key_path",
    "audit_public_keys",
    "chain_start_of",
    "check_retention_days",
    "entry_hash",
    "entry_record",
    "export",
    "key_id_of",
    "load_or_create_key",
    "load_public_key",
    "prune",
    "record",
    "verify",
    "verify_records",
]

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
HASHED_FIELDS = ("id", "at", "actor", "role", "action", "resource", "target", "outcome",
                 "reason", "detail", "status_code")
OUTCOMES = frozenset({"ok", "denied", "refused", "error"})
PRUNE_ACTION = "audit.prune"
SERVER_ACTOR = "edgeops-server"
RETENTION_FLOOR_DAYS = 183  # six months: EU AI Act Art. 19 and 26(6)
AUDIT_KEY_FILE = Path("keys") / "audit_ed25519"
_ADVISORY_KEY = 0x61756469  # "audi"
_LOOKBACK = 4096  # earlier entries an insertion is looked for among
# Column widths in server/db/tables.py: what is hashed is what the database keeps.
_WIDTHS = {"actor": 64, "role": 16, "action": 64, "resource": 300, "target": 300}


# -- the pure core: records, hashes, signatures ------------------------------------------------


def _iso(moment: datetime) -> str:
    return as_utc(moment).astimezone(UTC).isoformat(timespec="microseconds")


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 (hex) of an entry record's HASHED_FIELDS and its prev_hash."""
    fields = {name: entry.get(name) for name in HASHED_FIELDS}
    fields["prev_hash"] = entry.get("prev_hash")
    return hashlib.sha256(_canonical(fields)).hexdigest()


def entry_record(entry: AuditEntry) -> dict[str, Any]:
    """An entry as a plain record: what is hashed, exported and verified."""
    return {
        "id": entry.id, "at": _iso(entry.at), "actor": entry.actor, "role": entry.role,
        "action": entry.action, "resource": entry.resource, "target": entry.target,
        "outcome": entry.outcome, "reason": entry.reason, "detail": entry.detail,
        "status_code": entry.status_code, "prev_hash": entry.prev_hash,
        "entry_hash": entry.entry_hash,
    }


def anchor_payload(entry_id: int, head_hash: str, at: datetime | str) -> bytes:
    """The bytes an anchor signs: canonical JSON of {entry_id, head_hash, at}."""
    moment = at if isinstance(at, str) else _iso(at)
    return _canonical({"entry_id": entry_id, "head_hash": head_hash, "at": moment})


def _anchor_record(row: AuditAnchor) -> dict[str, Any]:
    return {"id": row.id, "at": _iso(row.at), "entry_id": row.entry_id,
            "head_hash": row.head_hash, "key_id": row.key_id, "signature": row.signature}


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """sha256 (hex) of the raw public key: which key signed an anchor."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class AuditVerdict:
    """What `verify` found: `ok`, or the first problem and the entry (or anchor) it concerns.

    `entries` counts the hashed entries checked, `legacy_entries` the rows from before the
    chain (migration 0005) that precede it and carry no hash."""

    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str | None = None
    legacy_entries: int = 0
    anchors: int = 0
    bad_anchor_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Tampered(Exception):
    def __init__(self, first_bad_id: int | None, problem: str, anchor_id: int | None = None) -> None:
        super().__init__(problem)
        self.first_bad_id, self.problem, self.anchor_id = first_bad_id, problem, anchor_id


def _span(first: int, last: int) -> str:
    return f"entry {first} was" if first == last else f"entries {first}-{last} were"


def _broken_link(
    entry: Mapping[str, Any], prev: Mapping[str, Any], nxt: Mapping[str, Any] | None,
    self_ok: bool, earlier: Mapping[str, int], successor: Mapping[int, int],
) -> _Tampered:
    """Name what happened when `entry`'s prev_hash is not `prev`'s entry_hash."""
    eid, pid = entry["id"], prev["id"]
    named = earlier.get(entry["prev_hash"] or "")
    if named is not None:  # it links to an older entry: the ones after that were inserted
        first = successor[named]
        return _Tampered(first, f"{_span(first, pid)} inserted (entry {eid}'s prev_hash skips "
                                f"to entry {named}'s hash)")
    if eid > pid + 1:
        return _Tampered(pid + 1, f"{_span(pid + 1, eid - 1)} deleted (entry {eid}'s prev_hash "
                                  "names a hash no longer present)")
    if nxt is not None and nxt["prev_hash"] == prev["entry_hash"]:
        return _Tampered(eid, f"entry {eid} was inserted (the entry after it links to entry {pid})")
    if self_ok:
        return _Tampered(pid, f"entry {pid} was edited and re-hashed (entry {eid} names a "
                              "different hash for it)")
    if nxt is None:
        return _Tampered(eid, f"entry {eid} was inserted (its prev_hash does not match entry "
                              f"{pid}'s hash)")
    return _Tampered(eid, f"entry {eid} was edited (its hash does not match its fields)")


def _walk(
    entries: Iterable[Mapping[str, Any]], chain_start: tuple[int, str] | None,
    watched: set[int], seen: dict[int, str],
) -> tuple[int, int, Mapping[str, Any] | None]:
    """Check every link in id order; return (hashed entries, legacy rows, head), or raise."""
    legacy = count = 0
    prev: Mapping[str, Any] | None = None
    window: deque[Mapping[str, Any]] = deque(maxlen=_LOOKBACK)
    iterator = iter(entries)
    entry = next(iterator, None)
    while entry is not None:
        nxt = next(iterator, None)
        eid = entry["id"]
        if entry.get("entry_hash") is None:
            if prev is not None:
                raise _Tampered(eid, f"entry {eid} has no hash: it was inserted after the chain began")
            legacy += 1
            entry = nxt
            continue
        count += 1
        if prev is None:
            expected = chain_start[1] if chain_start and chain_start[0] == eid else GENESIS_HASH
        else:
            expected = prev["entry_hash"]
        self_ok = entry_hash(entry) == entry["entry_hash"]
        if entry.get("prev_hash") != expected:
            if prev is None:
                if not self_ok:
                    raise _Tampered(eid, f"entry {eid} was edited (its hash does not match its fields)")
                raise _Tampered(eid, f"entries before entry {eid} were deleted (its prev_hash names "
                                     "a hash no longer present, and no prune recorded it)")
            earlier = {e["entry_hash"]: e["id"] for e in window}
            successor = {a["id"]: b["id"] for a, b in zip(window, list(window)[1:], strict=False)}
            successor[prev["id"]] = eid
            raise _broken_link(entry, prev, nxt, self_ok, earlier, successor)
        if not self_ok:
            raise _Tampered(eid, f"entry {eid} was edited (its hash does not match its fields)")
        if eid in watched:
            seen[eid] = entry["entry_hash"]
        window.append(entry)
        prev, entry = entry, nxt
    return count, legacy, prev


def _check_anchors(
    anchors: Sequence[Mapping[str, Any]], keys: Sequence[Ed25519PublicKey],
    seen: Mapping[int, str], head: Mapping[str, Any] | None,
) -> None:
    by_id = {key_id_of(k): k for k in keys}
    for a in anchors:
        key = by_id.get(a["key_id"])
        if key is None:
            raise _Tampered(None, f"anchor {a['id']} was signed by an unknown key "
                                  f"({a['key_id'][:16]}…)", a["id"])
        try:
            key.verify(bytes.fromhex(a["signature"]),
                       anchor_payload(a["entry_id"], a["head_hash"], a["at"]))
        except (InvalidSignature, ValueError):
            raise _Tampered(None, f"anchor {a['id']}'s signature does not verify: it was forged "
                                  "or altered", a["id"]) from None
    head_id = head["id"] if head else 0
    for a in anchors:
        eid = a["entry_id"]
        if eid > head_id:
            first = head_id + 1 if head else eid
            raise _Tampered(first, f"the tail was truncated: the head is entry {head_id}, older "
                                   f"than anchor {a['id']} (which covers entry {eid})", a["id"])
        if eid not in seen:
            raise _Tampered(eid, f"entry {eid}, which anchor {a['id']} signed, is gone", a["id"])
        if seen[eid] != a["head_hash"]:
            raise _Tampered(eid, f"entry {eid} no longer has the hash anchor {a['id']} signed: it "
                                 "was replaced after it was anchored", a["id"])


def chain_start_of(detail: str | None) -> tuple[int, str] | None:
    """(id, prev_hash) of the chain's oldest kept entry, from a prune entry's detail."""
    try:
        start = json.loads(detail or "")
        return int(start["chain_start_id"]), str(start["chain_start_prev_hash"])
    except (ValueError, KeyError, TypeError):
        return None


def verify_records(
    entries: Iterable[Mapping[str, Any]],
    anchors: Sequence[Mapping[str, Any]] = (),
    public_keys: Sequence[Ed25519PublicKey] = (),
    *,
    chain_start: tuple[int, str] | None = None,
) -> AuditVerdict:
    """Verify entry records in id order (as `export` writes them) and anchor records.

    `chain_start` is (id, prev_hash) of the oldest entry the latest prune kept (None: the chain
    starts at "0" * 64); the first problem found is the verdict."""
    ordered = sorted(anchors, key=lambda a: a["id"])
    seen: dict[int, str] = {}
    count = legacy = 0
    try:
        count, legacy, head = _walk(entries, chain_start, {a["entry_id"] for a in ordered}, seen)
        _check_anchors(ordered, public_keys, seen, head)
    except _Tampered as bad:
        return AuditVerdict(False, count, bad.first_bad_id, bad.problem, legacy, len(ordered),
                            bad.anchor_id)
    return AuditVerdict(True, count, legacy_entries=legacy, anchors=len(ordered))


# -- the shell: the database and the key file --------------------------------------------------


def _lock_chain(session: Session) -> None:
    """Serialize writers of the chain until this transaction ends (the unique entry_hash and
    the id primary key are the backstop)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
    elif dialect == "sqlite":  # a write first takes SQLite's write lock before anything is read
        session.execute(update(AuditAnchor).where(AuditAnchor.id < 0).values(id=AuditAnchor.id))


def _head(session: Session) -> tuple[int, str]:
    """(the highest id, the newest entry_hash or GENESIS_HASH): what the next entry links to."""
    last_id = session.scalar(select(func.max(AuditEntry.id))) or 0
    newest = session.scalar(
        select(AuditEntry.entry_hash).where(AuditEntry.entry_hash.is_not(None))
        .order_by(AuditEntry.id.desc()).limit(1)
    )
    return last_id, newest or GENESIS_HASH


def _clip(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"audit entry {name} must be a string, not {type(value).__name__}")
    return value[: _WIDTHS[name]]


def append(
    session: Session, *, actor: str, role: str | None, action: str, resource: str,
    target: str | None = None, outcome: str = "ok", reason: str | None = None,
    detail: str | None = None, status_code: int | None = None, at: datetime | None = None,
) -> AuditEntry:
    """Add the next entry to the chain in the caller's transaction and return it (flushed).

    Takes the chain lock until the transaction ends: call it last, then commit."""
    if not actor or not action or not resource:
        raise ConfigError(f"an audit entry needs an actor, action and resource, got "
                          f"{actor!r}, {action!r}, {resource!r}")
    if outcome not in OUTCOMES:
        raise ConfigError(f"audit outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
    _lock_chain(session)
    last_id, prev_hash = _head(session)
    entry = AuditEntry(
        id=last_id + 1, at=as_utc(at or datetime.now(UTC)).astimezone(UTC),
        actor=_clip("actor", actor), role=_clip("role", role), action=_clip("action", action),
        resource=_clip("resource", resource), target=_clip("target", target), outcome=outcome,
        reason=reason, detail=detail, status_code=status_code, prev_hash=prev_hash,
    )
    entry.entry_hash = entry_hash(entry_record(entry))
    session.add(entry)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":  # ids are ours; keep the sequence past them
        session.execute(text("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), :id)"),
                        {"id": entry.id})
    return entry


def record(
    session_factory: Callable[[], Session], actor: str, action: str, target: str | None,
    reason: str | None, outcome: str = "ok", detail: str | None = None, *,
    role: str | None = None, resource: str | None = None,
) -> int | None:
    """Append one entry in its own transaction, for domain code (a pipeline run's step, a
    rollout's verdict); `resource` defaults to the action's first word ("pipeline").

    Returns the entry's id, or None when the database refused (logged, never raised: a
    failing audit write must not stop the work it describes)."""
    try:
        with session_factory() as session, session.begin():
            entry = append(session, actor=actor, role=role, action=action,
                           resource=resource or action.split(".", 1)[0], target=target,
                           outcome=outcome, reason=reason, detail=detail)
            return entry.id
    except SQLAlchemyError:
        logger.exception("could not write the audit entry %s %s by %s", action, target, actor)
        return None


def audit_key_path(home: Path) -> Path:
    """Where a server home keeps its audit signing key (the public key beside it, .pub)."""
    return Path(home) / AUDIT_KEY_FILE


def load_or_create_key(home: Path) -> Ed25519PrivateKey:
    """The home's audit key, generated (0600) on first use; concurrent first uses agree."""
    path = audit_key_path(home)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        staged = path.with_name(f".{path.name}.{os.getpid()}.new")
        write_bytes_atomic(staged, pem, mode=0o600)
        try:
            os.link(staged, path)  # fails if another process won the race: use its key
        except FileExistsError:
            pass
        finally:
            staged.unlink(missing_ok=True)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the audit key {path}: {err}") from err
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"the audit key {path} is not an Ed25519 key")
    key = loaded
    public = path.with_name(path.name + ".pub")
    if not public.exists():
        write_bytes_atomic(public, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            mode=0o644)
    return key


def audit_public_keys(home: Path) -> list[Ed25519PublicKey]:
    """The keys a home's anchors verify with: its .pub file, else its private key's public
    half, else none (then every anchor is reported as signed by an unknown key)."""
    path = audit_key_path(home)
    public = path.with_name(path.name + ".pub")
    if public.exists():
        return [load_public_key(public)]
    return [load_or_create_key(home).public_key()] if path.exists() else []


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (a home's keys/audit_ed25519.pub, say)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the audit public key {path}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def _newest_anchor(session: Session) -> AuditAnchor | None:
    return session.scalar(select(AuditAnchor).order_by(AuditAnchor.id.desc()).limit(1))


def anchor(session: Session, key: Ed25519PrivateKey, *, at: datetime | None = None) -> AuditAnchor:
    """Sign the chain's head now; NotFoundError if the chain has no entry yet."""
    _lock_chain(session)
    head = session.execute(
        select(AuditEntry.id, AuditEntry.entry_hash).where(AuditEntry.entry_hash.is_not(None))
        .order_by(AuditEntry.id.desc()).limit(1)
    ).first()
    if head is None:
        raise NotFoundError("the audit log has no hashed entry yet: nothing to anchor")
    moment = as_utc(at or datetime.now(UTC)).astimezone(UTC)
    row = AuditAnchor(
        at=moment, entry_id=head.id, head_hash=head.entry_hash,
        key_id=key_id_of(key.public_key()),
        signature=key.sign(anchor_payload(head.id, head.entry_hash, moment)).hex(),
    )
    session.add(row)
    session.flush()
    return row


def anchor_if_moved(session: Session, key: Ed25519PrivateKey) -> AuditAnchor | None:
    """Anchor the head unless the newest anchor already names it (or the log is empty)."""
    _lock_chain(session)
    newest = _newest_anchor(session)
    _, head_hash = _head(session)
    if head_hash == GENESIS_HASH or (newest is not None and newest.head_hash == head_hash):
        return None
    return anchor(session, key)


def verify(
    session: Session, public_key: Ed25519PublicKey | Sequence[Ed25519PublicKey]
) -> AuditVerdict:
    """Walk the whole chain and every anchor; the verdict names the first problem."""
    keys = [public_key] if isinstance(public_key, Ed25519PublicKey) else list(public_key)
    anchors = [_anchor_record(a) for a in session.scalars(select(AuditAnchor))]
    last_prune = session.scalar(
        select(AuditEntry.detail).where(AuditEntry.action == PRUNE_ACTION)
        .order_by(AuditEntry.id.desc()).limit(1)
    )
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)
                           .execution_options(yield_per=1000))
    return verify_records((entry_record(r) for r in rows), anchors, keys,
                          chain_start=chain_start_of(last_prune))


def export(
    session: Session, since: datetime | None = None, until: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Entry records with since <= at < until (either open), in id order, hashes included."""
    stmt = select(AuditEntry).order_by(AuditEntry.id)
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= as_utc(since).astimezone(UTC))
    if until is not None:
        stmt = stmt.where(AuditEntry.at < as_utc(until).astimezone(UTC))
    for row in session.scalars(stmt.execution_options(yield_per=1000)):
        yield entry_record(row)


def check_retention_days(days: int) -> int:
    """`days`, unless it is below the six-month floor (ConfigError)."""
    if isinstance(days, bool) or not isinstance(days, int) or days < RETENTION_FLOOR_DAYS:
        raise ConfigError(
            f"audit_retention_days = {days!r} is below the floor of {RETENTION_FLOOR_DAYS} days: "
            "automatic logs are kept at least six months (EU AI Act Art. 19 and 26(6))"
        )
    return days


def prune(
    session: Session, now: datetime, *, retention_days: int, key: Ed25519PrivateKey,
    actor: str = SERVER_ACTOR,
) -> int:
    """Remove the entries older than retention that an anchor covers (never the head), record
    where the chain now starts in an "audit.prune" entry, re-anchor; return how many went."""
    check_retention_days(retention_days)
    _lock_chain(session)
    newest = _newest_anchor(session)
    last_id, _ = _head(session)
    if newest is None or last_id == 0:
        return 0
    cutoff = as_utc(now).astimezone(UTC) - timedelta(days=retention_days)
    first_young = session.scalar(select(func.min(AuditEntry.id)).where(AuditEntry.at >= cutoff))
    through = min(newest.entry_id, last_id - 1, (first_young or last_id + 1) - 1)
    count = session.scalar(select(func.count()).select_from(AuditEntry)
                           .where(AuditEntry.id <= through)) or 0
    if count == 0:
        return 0
    session.execute(delete(AuditEntry).where(AuditEntry.id <= through))
    session.execute(delete(AuditAnchor).where(AuditAnchor.entry_id <= through))
    start = session.execute(
        select(AuditEntry.id, AuditEntry.prev_hash).where(AuditEntry.entry_hash.is_not(None))
        .order_by(AuditEntry.id).limit(1)
    ).first()
    start_id, start_prev = (start.id, start.prev_hash) if start else (last_id + 1, _head(session)[1])
    detail = json.dumps({
        "count": count, "removed_through_id": through, "cutoff": _iso(cutoff),
        "retention_days": retention_days, "chain_start_id": start_id,
        "chain_start_prev_hash": start_prev,
    }, sort_keys=True)
    append(session, actor=actor, role=None, action=PRUNE_ACTION, resource="audit",
           target=f"audit_log entries up to {through}", reason=f"retention {retention_days} days",
           detail=detail)
    anchor(session, key)
    logger.info("pruned %d audit entries up to id %d", count, through)
    return count


class _Keeper:
    """One tick of a server's audit upkeep: prune past retention, anchor a moved head."""

    def __init__(self, settings: ServerSettings, session_factory: sessionmaker) -> None:
        self.home = settings.home
        self.retention_days = check_retention_days(settings.audit_retention_days)
        self.session_factory = session_factory

    def tick(self) -> None:
        key = load_or_create_key(self.home)
        try:
            with self.session_factory() as session, session.begin():
                anchor_if_moved(session, key)
            with self.session_factory() as session, session.begin():
                prune(session, datetime.now(UTC), retention_days=self.retention_days, key=key)
        except (SQLAlchemyError, EdgeOpsError):
            logger.exception("audit anchoring failed; retrying next tick")


def anchor_hook(settings: ServerSettings, session_factory: sessionmaker) -> LifespanHook:
    """The lifespan hook anchoring the chain every `audit_anchor_interval_s` when its head moved
    (and pruning past `audit_retention_days`); a retention below the floor fails here."""
    return periodic("audit-anchor", _Keeper(settings, session_factory).tick,
                    settings.audit_anchor_interval_s)
