"""`edgeops rollout`: start, watch, pause, resume, abort, switch and list staged rollouts."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import click
import typer

from edgeops.cli import emit
from edgeops.exit_codes import ExitCode
from edgeops.switch_window import SwitchWindowError, group_windows
from server.cli.api_client import HomeOption, JsonOption, ServerOption, TokenOption, connect
from server.rollouts.controller import RolloutPolicy
from server.rollouts.summary import bytes_text

__all__ = ["app", "render_rollout"]

DEFAULTS = RolloutPolicy()  # the options' defaults are the policy's own
DEFAULT_WAVES = ",".join(f"{p:g}" for p in DEFAULTS.waves_pct)

app = typer.Typer(
    name="rollout",
    help="Staged rollouts of a release to the fleet: waves "
    f"({', '.join(f'{p:g}%' for p in DEFAULTS.waves_pct)} by default) "
    "with a soak time, automatic abort and rollback when too many devices fail their "
    "health window.",
    no_args_is_help=True,
)

ACTIVE = ("running", "paused", "aborting")
BAR_WIDTH = 30


def _bar(done: int, failed: int, total: int) -> str:
    total = max(total, 1)
    ok = round(BAR_WIDTH * done / total)
    bad = min(BAR_WIDTH - ok, round(BAR_WIDTH * failed / total))
    return "[" + "#" * ok + "x" * bad + "." * (BAR_WIDTH - ok - bad) + "]"


def render_rollout(r: dict[str, Any]) -> str:
    """A rollout as the text an operator reads (pure; used by status and --watch)."""
    scope = r.get("group") or "the whole fleet"
    lines = [
        f"rollout {r['id']}  {r['target']} -> {scope}  [{r['status']}]"
        + (f"  {r['reason']}" if r.get("reason") else ""),
        f"  {_bar(r['done'], r['failed'], r['devices'])} {r['done']}/{r['devices']} committed "
        f"({r['progress_pct']}%), {r['failed']} failed, wave {r['current_wave']} of "
        f"{r['wave_count']}" + (f", {r['staged']} staged" if r.get("staged") else ""),
    ]
    for w in r.get("waves", []):
        lines.append(
            f"  wave {w['index']:<2} {_bar(w['done'], w['failed'], w['devices'])} "
            f"{w['done']:>5}/{w['devices']:<5} {w['status']}"
        )
    other = {k: v for k, v in r.get("phases", {}).items() if k not in ("succeeded", "queued")}
    if other:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())))
    if "bytes_sent" in r:  # servers before issue 17 do not report it
        how = ", ".join(f"{k} {v}" for k, v in sorted(r.get("transfers", {}).items()))
        lines.append(f"  bytes sent {bytes_text(r['bytes_sent'], r['bytes_full'])}"
                     + (f" ({how})" if how else ""))
    return "\n".join(lines)


def _waves(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"--waves must be comma-separated percentages: {err}") from err


def _switch_windows(values: list[str] | None) -> dict[str, str]:
    """`GROUP=HH:MM-HH:MM` options as the policy's {group: window}; BadParameter if not."""
    try:
        return group_windows(values or [])
    except SwitchWindowError as err:
        raise typer.BadParameter(str(err), param_hint="--switch-window") from err


def _watch(client: Any, rollout_id: int, interval_s: float, as_json: bool) -> dict[str, Any]:
    """Redraw the rollout every `interval_s` until it finishes; return its last state."""
    shown = 0
    while True:
        r = client.get(f"/api/rollouts/{rollout_id}")
        if as_json:
            click.echo(__import__("json").dumps(r, sort_keys=True))
        else:
            text = render_rollout(r)
            if shown and sys.stdout.isatty():
                click.echo(f"\x1b[{shown}F\x1b[J", nl=False)  # back up and clear
            click.echo(text)
            shown = text.count("\n") + 1
        if r["status"] not in ACTIVE:
            return r
        time.sleep(interval_s)


def _finish(r: dict[str, Any]) -> None:
    if r["status"] == "aborted":
        raise typer.Exit(ExitCode.UPDATE)


@app.command("start")
def start(
    release: Annotated[str, typer.Option("--release", help="TUF target path of the release.")],
    group: Annotated[str | None, typer.Option(help="Device group (default: the whole fleet).")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Only devices with this tag (repeat).")] = None,
    waves: Annotated[str, typer.Option(help="Cumulative % of devices per wave.")] = DEFAULT_WAVES,
    soak_s: Annotated[float, typer.Option("--soak", help="Seconds to wait after a wave passed.")] = DEFAULTS.soak_s,
    success_pct: Annotated[float, typer.Option(help="% of a wave that must commit.")] = DEFAULTS.success_pct,
    failure_threshold: Annotated[float, typer.Option(help="Abort when this % of updated devices failed...")] = DEFAULTS.failure_threshold_pct,
    failure_min: Annotated[int, typer.Option(help="...and at least this many.")] = DEFAULTS.failure_min_count,
    device_timeout_s: Annotated[float, typer.Option("--device-timeout", help="Seconds a device has to commit.")] = DEFAULTS.device_timeout_s,
    max_in_flight: Annotated[int | None, typer.Option("--max-in-flight", min=1, help="Devices updating at once; the rest of a wave waits for them (default: a whole wave at once).")] = DEFAULTS.max_in_flight,
    switch: Annotated[str | None, typer.Option("--switch", click_type=click.Choice(["now", "window", "command"]), help="When devices switch once staged: now, window (their group's --switch-window) or command (edgeops rollout switch ID). Default: window if --switch-window is given, else now.")] = None,
    switch_window: Annotated[list[str] | None, typer.Option("--switch-window", help="GROUP=HH:MM-HH:MM: devices of GROUP download now and switch inside this daily window (UTC, may cross midnight); GROUP * for every other group. Repeat per group.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow progress until it finishes (exit code 7 if it ends aborted).")] = False,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start rolling RELEASE out. Devices are chosen now (group, tags), in id order."""
    client = connect(home, server, token)
    body = {
        "target": release, "group": group, "tags": tag or [], "waves_pct": _waves(waves),
        "soak_s": soak_s, "success_pct": success_pct, "failure_threshold_pct": failure_threshold,
        "failure_min_count": failure_min, "device_timeout_s": device_timeout_s,
        "max_in_flight": max_in_flight, "switch": switch,
        "switch_windows": _switch_windows(switch_window),
    }
    r = client.post("/api/rollouts", json=body)
    if watch:
        _finish(_watch(client, r["id"], 1.0, as_json))
        return
    emit(r, as_json, f"started rollout {r['id']}: {r['target']} to {r['devices']} devices in "
                     f"{r['wave_count']} waves\nfollow it with: edgeops rollout status {r['id']} --watch")


@app.command("status")
def status(
    rollout_id: Annotated[int, typer.Argument(help="The rollout id.")],
    watch: Annotated[bool, typer.Option("--watch", help="Redraw until it finishes.")] = False,
    interval_s: Annotated[float, typer.Option("--interval", help="Seconds between redraws.")] = 1.0,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a rollout's waves and progress; with --watch follow it live (exit code 7 if it
    ends aborted)."""
    client = connect(home, server, token)
    if watch:
        _finish(_watch(client, rollout_id, interval_s, as_json))
        return
    r = client.get(f"/api/rollouts/{rollout_id}")
    emit(r, as_json, render_rollout(r))


def _action(what: str, rollout_id: int, home: Any, server: Any, token: Any, as_json: bool) -> None:
    r = connect(home, server, token).post(f"/api/rollouts/{rollout_id}/{what}")
    emit(r, as_json, render_rollout(r))


@app.command("pause")
def pause(rollout_id: Annotated[int, typer.Argument()], home: HomeOption = None,
          server: ServerOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Stop starting waves; devices already updating carry on."""
    _action("pause", rollout_id, home, server, token, as_json)


@app.command("resume")
def resume(rollout_id: Annotated[int, typer.Argument()], home: HomeOption = None,
           server: ServerOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Continue a paused rollout."""
    _action("resume", rollout_id, home, server, token, as_json)


@app.command("abort")
def abort(rollout_id: Annotated[int, typer.Argument()], home: HomeOption = None,
          server: ServerOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Stop, and roll back every device this rollout updated."""
    _action("abort", rollout_id, home, server, token, as_json)


@app.command("switch")
def switch_staged(
    rollout_id: Annotated[int, typer.Argument(help="The rollout id.")],
    device: Annotated[list[str] | None, typer.Option("--device", help="Only this staged device (repeat; default: every staged device of the rollout).")] = None,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Switch devices that hold the release staged (rollouts started with --switch command,
    or ahead of their --switch-window): they smoke-test, switch and start their health
    window now."""
    body = {"devices": device} if device else None
    r = connect(home, server, token).post(f"/api/rollouts/{rollout_id}/switch", json=body)
    switched = r["switched"]
    text = (f"switch sent to {len(switched)} staged devices" if switched
            else f"no device of rollout {rollout_id} is staged: nothing to switch")
    emit(r, as_json, text + "\n" + render_rollout(r["rollout"]))


@app.command("list")
def list_rollouts(
    status_filter: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rollouts, newest first."""
    params = {"status": status_filter} if status_filter else {}
    rows = connect(home, server, token).get("/api/rollouts", params=params)
    lines = [
        f"{r['id']:>4}  {r['status']:<9} {r['done']:>6}/{r['devices']:<6} {r['progress_pct']:>5}%  "
        f"{r['target']}  ({r.get('group') or 'fleet'})"
        for r in rows
    ]
    emit({"rollouts": rows}, as_json, "\n".join(lines) if lines else "no rollouts yet")
