"""`edgeops audit verify|export` on a server home, run as a user runs them."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError
from edgeops.exit_codes import ExitCode
from server.cli.audit import parse_time, render_verdict
from server.config.settings import ServerSettings
from server.governance import audit_chain as chain
from tests.cli_support import run_edgeops

pytestmark = [pytest.mark.governance, pytest.mark.e2e]

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def home(server_settings: ServerSettings, session_factory: sessionmaker) -> ServerSettings:
    """A server home whose log holds six entries a day apart, the head anchored."""
    key = chain.load_or_create_key(server_settings.home)
    for day in range(6):
        with session_factory() as session, session.begin():
            chain.append(session, actor="ada", role="admin", action="release.publish",
                         resource="release", target=f"digits v{day}", at=T0 + timedelta(days=day))
    with session_factory() as session, session.begin():
        chain.anchor(session, key)
    return server_settings


def test_verify_exits_0_on_an_untouched_log_and_5_after_an_edit(home: ServerSettings) -> None:
    ok = run_edgeops("audit", "verify", "--home", str(home.home), "--json")
    assert ok.returncode == ExitCode.OK, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True and json.loads(ok.stdout)["entries"] == 6

    with sqlite3.connect(home.home / "registry.db") as db:
        db.execute("UPDATE audit_log SET target = 'digits v9' WHERE id = 3")
    bad = run_edgeops("audit", "verify", "--home", str(home.home))
    assert bad.returncode == ExitCode.TRUST, bad.stderr
    assert "audit log TAMPERED: entry 3 was edited (its hash does not match its fields)" in bad.stdout


def test_export_writes_the_window_as_json_lines(home: ServerSettings) -> None:
    out = home.home.parent / "archive" / "audit.jsonl"
    done = run_edgeops("audit", "export", "--home", str(home.home), "--since", "2026-11-02",
                       "--until", "2026-11-05T00:00:00+00:00", "--out", str(out), "--json")
    assert done.returncode == ExitCode.OK, done.stderr
    assert json.loads(done.stdout) == {"entries": 3, "out": str(out)}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["target"] for r in records] == ["digits v1", "digits v2", "digits v3"]
    assert all(chain.entry_hash(r) == r["entry_hash"] for r in records)


def test_times_are_iso_and_naive_ones_are_utc() -> None:
    assert parse_time("2026-11-02", "--since") == datetime(2026, 11, 2, tzinfo=UTC)
    assert parse_time(None, "--until") is None
    with pytest.raises(ConfigError, match="--since 'last tuesday' is not an ISO 8601 time"):
        parse_time("last tuesday", "--since")


def test_the_verdict_reads_as_a_sentence() -> None:
    verdict = chain.AuditVerdict(False, 4, 3, "entry 3 was edited", legacy_entries=2).to_json()
    assert render_verdict(verdict) == (
        "audit log TAMPERED: entry 3 was edited; 2 legacy rows without hashes precede the chain")
