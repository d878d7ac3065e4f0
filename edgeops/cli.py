"""The `edgeops` command.

Subcommand groups are plugins registered under the `edgeops.commands` entry point group
(agent, server, model, release, simulate, ...). The core imports none of them until the
user asks for one, so `edgeops agent ...` never loads the server's dependencies, and a
group whose extra is missing says which extra to install.
"""

from __future__ import annotations

import json
import logging
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from edgeops import __version__
from edgeops.errors import EdgeOpsError
from edgeops.exit_codes import ExitCode, exit_code_for

__all__ = [
    "JSON_HELP",
    "JsonOption",
    "ServerHomeOption",
    "emit",
    "home_option",
    "main",
]

ENTRY_POINT_GROUP = "edgeops.commands"
EXTRA_FOR_GROUP = {"agent": "agent", "simulate": "all"}
OWN_PACKAGES = {"edgeops", "agent", "server", "simulations"}


# Options every command group shares, defined once (`edgeops agent ...` imports these too).
JSON_HELP = "Print one JSON object instead of text."
JsonOption = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


def home_option(help_text: str = "The server home folder.") -> Any:
    """The `--home PATH` option, with the help that says whose home it is."""
    return typer.Option("--home", help=help_text)


ServerHomeOption = Annotated[Path, home_option()]


def _plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _missing_extra_command(name: str, err: ImportError) -> click.Command:
    extra = EXTRA_FOR_GROUP.get(name, "server")

    def explain() -> None:
        click.echo(
            f"error: 'edgeops {name}' needs a package that is not installed ({err.name or err}).\n"
            f"Install it with: pip install 'edgeops[{extra}]'",
            err=True,
        )
        sys.exit(ExitCode.MISSING_DEPENDENCY)

    return click.Command(name, callback=explain, help=f"(unavailable: pip install 'edgeops[{extra}]')")


class PluginGroup(click.Group):
    """A click group whose subcommands load lazily from entry points."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_plugins())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry_point = _plugins().get(cmd_name)
        if entry_point is None:
            return None
        try:
            loaded = entry_point.load()
        except ImportError as err:
            if (err.name or "").split(".")[0] in OWN_PACKAGES:
                raise  # a bug in EdgeOps itself, not a missing extra
            return _missing_extra_command(cmd_name, err)
        command = typer.main.get_command(loaded) if isinstance(loaded, typer.Typer) else loaded
        command.name = cmd_name
        return command


@click.group(
    cls=PluginGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "EdgeOps: federated training, signed int8 ONNX releases and OTA rollouts to a fleet.\n\n"
        "Try the whole loop on this machine first:  edgeops simulate --devices 10"
    ),
)
@click.version_option(__version__, prog_name="edgeops")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def root(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def emit(result: dict[str, Any], as_json: bool, human: str) -> None:
    """Print a command's result: one JSON object with --json, else the human text."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        click.echo(human)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the command and maps domain errors to exit codes.

    With `standalone_mode=False` Click catches a command's `typer.Exit(code)` itself and
    returns the code instead of raising it, so the returned value is the exit code to pass on.
    """
    try:
        returned = root.main(args=argv, prog_name="edgeops", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except EdgeOpsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(exit_code_for(err))
    sys.exit(_exit_code_of(returned))


def _exit_code_of(returned: object) -> int:
    """The process exit code for what `root.main` returned (an `Exit`'s code, or a result)."""
    if isinstance(returned, int) and not isinstance(returned, bool):
        return returned
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    main()
