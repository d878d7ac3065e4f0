"""`edgeops audit`: check and archive the hash-chained audit log, offline on a server home."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from sqlalchemy.orm import Session

from edgeops.cli import JsonOption, ServerHomeOption, emit
from edgeops.errors import ConfigError
from edgeops.exit_codes import ExitCode

__all__ = ["app", "parse_time", "render_verdict"]

app = typer.Typer(
    name="audit",
    help="The tamper-evident audit log: every action on models, releases, keys, tokens, "
    "devices, rollouts and pipeline runs is one entry carrying the hash of the one before; "
    "the server signs the chain's head every few minutes (an anchor). 'verify' names the "
    "first edited, inserted or deleted entry, 'export' writes JSON lines for an archive.",
    no_args_is_help=True,
)

TimeOption = Annotated[str | None, typer.Option(help="ISO 8601 time (UTC if no offset).")]


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO time from the command line (naive: UTC); ConfigError names the option."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"{option} {value!r} is not an ISO 8601 time (e.g. 2026-06-01T00:00:00Z)") from err
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render_verdict(verdict: dict[str, Any]) -> str:
    """The human line for a verdict (pure)."""
    legacy = verdict["legacy_entries"]
    before = f"; {legacy} legacy rows without hashes precede the chain" if legacy else ""
    if verdict["ok"]:
        return (f"audit log ok: {verdict['entries']} entries chained, "
                f"{verdict['anchors']} anchors verified{before}")
    return f"audit log TAMPERED: {verdict['problem']}{before}"


@contextmanager
def _session(home: Path) -> Iterator[Session]:
    from server.config.settings import load_settings
    from server.db.engine import close_database, open_database

    session_factory = open_database(load_settings(home).resolved_database_url)
    try:
        with session_factory() as session:
            yield session
    finally:
        close_database(session_factory)


@app.command("verify")
def verify(
    home: ServerHomeOption,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="The audit public key (PEM) to check anchors with; "
                     "default: the home's keys/audit_ed25519.pub. Keep a copy off the server."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Walk the whole chain and every signed anchor. Exit 0 if untouched, 5 if tampered
    (the message names the first edited, inserted or deleted entry, or a truncated tail)."""
    from server.config.settings import load_settings
    from server.governance import audit_chain

    settings = load_settings(home)
    keys = ([audit_chain.load_public_key(public_key)] if public_key
            else audit_chain.audit_public_keys(settings.home))
    with _session(home) as session:
        verdict = audit_chain.verify(session, keys).to_json()
    emit(verdict, as_json, render_verdict(verdict))
    if not verdict["ok"]:
        raise typer.Exit(ExitCode.TRUST)


def _write_lines(records: Iterator[dict[str, Any]], out: IO[str]) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record, sort_keys=True) + "\n")
        count += 1
    return count


@app.command("export")
def export(
    home: ServerHomeOption,
    since: TimeOption = None,
    until: TimeOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (atomically) instead of stdout.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Entries with --since <= time < --until as JSON lines, with their hashes, so an
    archive can check the chain on its own (server.governance.audit_chain.verify_records)."""
    from server.governance import audit_chain

    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if start and end and start >= end:
        raise ConfigError(f"--since {since} is not before --until {until}")
    with _session(home) as session:
        records = audit_chain.export(session, start, end)
        if out is None:
            _write_lines(records, sys.stdout)
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                count = _write_lines(records, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staged, out)
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise
    emit({"entries": count, "out": str(out)}, as_json, f"exported {count} audit entries to {out}")
