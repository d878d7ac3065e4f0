"""`edgeops` with an extra missing: the groups it would run are listed apart in `--help`,
running one says which extra to install (exit MISSING_DEPENDENCY, no traceback), and so
does a command that meets a missing package only while it runs. The real agent-only venv
is tests/e2e/test_agent_only_install.py; here the installed set is patched."""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint

import click
import pytest

from edgeops import cli
from edgeops.exit_codes import ExitCode


@click.command()
def needs_alembic() -> None:
    raise ModuleNotFoundError("No module named 'alembic'", name="alembic")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


@pytest.fixture
def server_extra_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        cli, "missing_for_extra", lambda extra: ("alembic", "fastapi") if extra == "server" else ()
    )


def test_help_lists_groups_whose_extra_is_missing_apart(
    server_extra_missing: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--help"], capsys)

    available, _, missing = out.partition("Not installed (pip install 'edgeops[server]'):")
    assert code == ExitCode.OK
    assert "\n  agent " in available
    assert re.search(r"\n  server +needs alembic, fastapi\n", missing)
    assert "\n  server " not in available


def test_running_such_a_group_names_the_extra(
    server_extra_missing: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["server", "init", "--home", "x"], capsys)

    assert code == ExitCode.MISSING_DEPENDENCY
    assert (
        "'edgeops server' needs the 'server' extra, which is not installed (alembic, fastapi)"
        in err
    )
    assert "pip install 'edgeops[server]'" in err


def test_a_package_missing_at_run_time_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = EntryPoint("server", f"{__name__}:needs_alembic", cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(cli, "_plugins", lambda: {"server": broken})

    code, _, err = run(["-v", "server"], capsys)

    assert code == ExitCode.MISSING_DEPENDENCY
    assert "'edgeops server' needs the Python package 'alembic', which is not installed" in err
    assert "pip install 'edgeops[server]'" in err


def test_this_installation_has_every_extra() -> None:
    assert cli.missing_for_extra("server") == () and cli.missing_for_extra("agent") == ()
