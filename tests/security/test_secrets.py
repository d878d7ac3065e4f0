"""Issue 16 item 10: no secret on the command line, no password in an error message.

A value on the command line is readable by every local user (`ps`, /proc/<pid>/cmdline) and
stays in shell history; a database URL in an error message lands in logs and CI output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import click.testing
import pytest
import typer
from typer.testing import CliRunner

from edgeops.cli import root
from edgeops.cli_secrets import read_secret
from edgeops.errors import ConfigError
from server.db.engine import migrate_database
from simulations.mosquitto import free_port

pytestmark = [pytest.mark.security]

SECRET_WORDS = re.compile(r"token|password|passphrase|secret", re.IGNORECASE)
PASSWORD = "s3cr3t-Pa55"


def _commands(
    command: click.Command, path: str, ctx: click.Context
) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                yield from _commands(sub, f"{path} {name}", ctx)


def _takes_a_secret_value(param: click.Parameter) -> bool:
    """An option or argument named like a secret whose value is the secret itself (a file
    path or a flag is fine)."""
    if not any(SECRET_WORDS.search(name) for name in [param.name or "", *param.opts]):
        return False
    if isinstance(param, click.Option) and (param.is_flag or param.count):
        return False
    return not isinstance(param.type, click.Path | click.File)


def test_no_command_takes_a_token_or_password_as_a_value() -> None:
    ctx = click.Context(root)
    offenders = []
    for path, command in _commands(root, "edgeops", ctx):
        for param in command.params:
            if _takes_a_secret_value(param):
                offenders.append(f"{path} {'/'.join(param.opts)}")
    assert offenders == [], f"options that take a secret on the command line: {offenders}"
    rollout_list = root.get_command(ctx, "rollout")
    assert isinstance(rollout_list, click.Group)
    listed = rollout_list.get_command(ctx, "list")
    assert listed is not None and any(
        "--token-file" in p.opts for p in listed.params if isinstance(p, click.Option)
    )


def test_a_token_typed_on_the_command_line_is_refused() -> None:
    # Attack (what an operator used to type): the token in argv, visible to every local user.
    result = click.testing.CliRunner().invoke(root, ["rollout", "list", "--token", "hunter2-token"])

    assert result.exit_code == 2
    assert "No such option '--token'" in result.output and "--token-file" in result.output


def test_a_token_comes_from_a_file_or_standard_input(tmp_path: Path) -> None:
    from server.cli.api_client import connect

    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file\n")
    client = connect(None, "http://127.0.0.1:9", token_file)
    assert client._http.headers["Authorization"] == "Bearer tok-from-file"
    client.close()

    app = typer.Typer()

    @app.command()
    def show(token_file: Path) -> None:
        typer.echo(read_secret(token_file, what="API token"))

    piped = CliRunner().invoke(app, ["-"], input="tok-from-stdin\n")
    assert piped.output.strip() == "tok-from-stdin"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=f"API token in {empty} is empty"):
        read_secret(empty, what="API token")


def test_a_database_password_typed_on_the_command_line_is_refused(tmp_path: Path) -> None:
    from server.cli.server import app

    url = f"postgresql+psycopg2://edgeops:{PASSWORD}@127.0.0.1:9/edgeops"
    result = CliRunner().invoke(app, ["init", "--home", str(tmp_path / "s"), "--database-url", url])

    assert isinstance(result.exception, ConfigError)
    assert "EDGEOPS_SERVER_DATABASE_URL" in str(result.exception)
    assert PASSWORD not in str(result.exception) and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+nosuchdriver://edgeops:{PASSWORD}@127.0.0.1:9/edgeops",  # no such driver
        f"postgresql://edgeops:{PASSWORD}@[::1/edgeops",  # not a URL SQLAlchemy can parse
    ],
)
def test_a_database_url_that_cannot_be_opened_is_shown_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match="cannot open database URL") as refused:
        migrate_database(url)

    assert PASSWORD not in str(refused.value)
    assert "***" in str(refused.value)
    assert refused.value.__cause__ is None  # the cause's text quotes the URL: not chained


@pytest.mark.integration  # a refused TCP connection on a free local port
def test_a_database_connection_failure_is_shown_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli.server import app

    url = f"postgresql+psycopg2://edgeops:{PASSWORD}@127.0.0.1:{free_port()}/edgeops"
    monkeypatch.setenv("EDGEOPS_SERVER_DATABASE_URL", url)  # the supported way to pass it

    result = CliRunner().invoke(app, ["init", "--home", str(tmp_path / "s")])

    assert isinstance(result.exception, ConfigError)
    message = str(result.exception)
    assert "cannot migrate the database at postgresql+psycopg2://edgeops:***@127.0.0.1" in message
    assert PASSWORD not in message
