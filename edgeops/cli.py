"""The `edgeops` command.

Subcommand groups are plugins registered under the `edgeops.commands` entry point group
(agent, server, model, release, simulate, ...). The core imports none of them until the
user asks for one, so `edgeops agent ...` never loads the server's dependencies. A group
whose extra is not installed (read from the installed distribution's requirements) is
listed apart in `--help` and, run, says which extra to install and exits with
MISSING_DEPENDENCY, as does any command that meets a missing package while it runs.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, requires, version
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
DISTRIBUTION = "edgeops"
# The extra each command group needs; every group not named here needs `server`.
EXTRA_FOR_GROUP = {"agent": "agent"}
DEFAULT_EXTRA = "server"
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


def extra_for(group: str) -> str:
    return EXTRA_FOR_GROUP.get(group, DEFAULT_EXTRA)


@functools.cache
def missing_for_extra(extra: str) -> tuple[str, ...]:
    """The distributions `edgeops[extra]` requires (through the extras it includes) that
    are not installed; empty when all are, or when EdgeOps runs without its metadata."""
    try:
        requirements = [Requirement(text) for text in requires(DISTRIBUTION) or []]
    except PackageNotFoundError:
        return ()
    missing: set[str] = set()
    pending, seen = [extra], set()
    while pending:
        current = pending.pop()
        seen.add(current)
        for requirement in requirements:
            if requirement.marker is None or not requirement.marker.evaluate({"extra": current}):
                continue
            if canonicalize_name(requirement.name) == DISTRIBUTION:
                pending.extend(e for e in requirement.extras if e not in seen)
                continue
            try:
                version(requirement.name)
            except PackageNotFoundError:
                missing.add(requirement.name)
    return tuple(sorted(missing))


def _install_hint(what: str, extra: str) -> str:
    return f"error: {what}.\nInstall it with: pip install 'edgeops[{extra}]'"


class _UnavailableCommand(click.Command):
    """Stands for a group whose extra is not installed: `--help` lists it apart, and
    running it says what to install instead of importing the group."""

    def __init__(self, name: str, extra: str, missing: Sequence[str]) -> None:
        self.extra = extra
        packages = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        super().__init__(
            name,
            callback=self._explain,
            help=f"needs {packages}",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            add_help_option=False,
        )
        self._what = (
            f"'edgeops {name}' needs the '{extra}' extra, which is not installed ({packages})"
        )

    def _explain(self) -> None:
        click.echo(_install_hint(self._what, self.extra), err=True)
        sys.exit(ExitCode.MISSING_DEPENDENCY)


class PluginGroup(click.Group):
    """A click group whose subcommands load lazily from entry points."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_plugins())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry_point = _plugins().get(cmd_name)
        if entry_point is None:
            return None
        extra = extra_for(cmd_name)
        missing = missing_for_extra(extra)
        if missing:
            return _UnavailableCommand(cmd_name, extra, missing)
        try:
            loaded = entry_point.load()
        except ImportError as err:
            if (err.name or "").split(".")[0] in OWN_PACKAGES:
                raise  # a bug in EdgeOps itself, not a missing extra
            return _UnavailableCommand(cmd_name, extra, [err.name or str(err)])
        command = typer.main.get_command(loaded) if isinstance(loaded, typer.Typer) else loaded
        command.name = cmd_name
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands this installation can run, then those whose extra is missing."""
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        shown = [(name, cmd) for name, cmd in commands if cmd is not None and not cmd.hidden]
        if not shown:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in shown)
        sections: dict[str, list[tuple[str, str]]] = {}
        for name, cmd in shown:
            title = (
                f"Not installed (pip install 'edgeops[{cmd.extra}]')"
                if isinstance(cmd, _UnavailableCommand)
                else "Commands"
            )
            sections.setdefault(title, []).append((name, cmd.get_short_help_str(limit)))
        for title in sorted(sections, key=lambda t: t != "Commands"):
            with formatter.section(title):
                formatter.write_dl(sections[title])


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
    except ModuleNotFoundError as err:
        package = (err.name or "").split(".")[0]
        if not package or package in OWN_PACKAGES:
            raise  # a bug in EdgeOps itself: show the traceback
        group = _group_of(sys.argv[1:] if argv is None else argv)
        command = f"'edgeops {group}'" if group else "this command"
        what = f"{command} needs the Python package '{package}', which is not installed"
        click.echo(_install_hint(what, extra_for(group or "")), err=True)
        sys.exit(ExitCode.MISSING_DEPENDENCY)
    sys.exit(_exit_code_of(returned))


def _group_of(args: Sequence[str]) -> str | None:
    """The command group named in `args` (the first word that is not an option)."""
    word = next((arg for arg in args if not arg.startswith("-")), None)
    return word if word in _plugins() else None


def _exit_code_of(returned: object) -> int:
    """The process exit code for what `root.main` returned (an `Exit`'s code, or a result)."""
    if isinstance(returned, int) and not isinstance(returned, bool):
        return returned
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    main()
