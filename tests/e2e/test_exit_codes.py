"""The exit codes the `edgeops` commands document reach the shell.

Each command runs in a fresh interpreter (`python -m edgeops.cli`), as a script sees it: a
rollout that ends aborted exits 7 from `rollout start --watch` and `rollout status --watch`
(a `typer.Exit`, which Click in `standalone_mode=False` returns instead of raising), and
the `rollout` and `release` failures exit with their `ExitCode`. The live server has a real
Mosquitto, so its rollout runner ticks and an abort settles to `aborted`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from edgeops.cli import root
from edgeops.exit_codes import ExitCode
from edgeops.messages import DeviceStatus
from server.app.build import build_app
from server.app.home import init_home, read_admin_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.fleet import inventory
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker, free_port
from tests.cli_support import run_edgeops
from tests.server.helpers import live_server, make_package

# The codes this module shows reaching the shell, by command group.
PRODUCED = {
    "rollout": {ExitCode.USAGE, ExitCode.CONFIG, ExitCode.TRANSPORT, ExitCode.UPDATE,
                ExitCode.NOT_FOUND},
    "release": {ExitCode.USAGE, ExitCode.CONFIG},
}
DOCUMENTED_CODE = re.compile(r"exit code (\d+)")


@pytest.fixture
def server(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[dict]:
    """A live server whose runner ticks; devices `off-1..3` known but offline."""
    settings = ServerSettings(home=tmp_path / "server", broker_host=mosquitto.host,
                              broker_port=mosquitto.port)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    release = publish_package(settings, factory, make_package(tmp_path / "p", seed=1), "int8")
    with factory.begin() as session:
        for device_id in ("off-1", "off-2", "off-3"):
            inventory.apply_status(
                session, DeviceStatus(device_id=device_id, online=False, state="offline"),
                datetime.now(UTC),
            )
    with live_server(build_app(settings)) as url:
        client = httpx.Client(base_url=url, timeout=30,
                              headers={"Authorization": f"Bearer {read_admin_token(settings)}"})
        yield {"url": url, "home": str(settings.home), "target": release.target_path,
               "api": client}
        client.close()
    close_database(factory)


def _connection(server: dict) -> list[str]:
    return ["--home", server["home"], "--server", server["url"]]


def _wait_for_status(api: httpx.Client, rollout_id: int, status: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.get(f"/api/rollouts/{rollout_id}").json()["status"] == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"rollout {rollout_id} never reached {status}")


def _help_codes(*command: str) -> set[int]:
    result = CliRunner().invoke(root, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    # The options table's borders fall between the words of a wrapped help line.
    words = result.output.replace("│", " ").split()
    return {int(code) for code in DOCUMENTED_CODE.findall(" ".join(words))}


@pytest.mark.integration
@pytest.mark.rollouts
def test_rollout_status_watch_exits_7_when_the_rollout_ends_aborted(server: dict) -> None:
    api = server["api"]
    rollout = api.post("/api/rollouts", json={"target": server["target"], "soak_s": 0}).json()
    api.post(f"/api/rollouts/{rollout['id']}/abort").raise_for_status()
    _wait_for_status(api, rollout["id"], "aborted")

    result = run_edgeops("rollout", "status", str(rollout["id"]), "--watch", "--interval", "0.2",
                         *_connection(server), timeout=120)

    assert result.returncode == ExitCode.UPDATE == 7, result.stdout + result.stderr
    assert "[aborted]" in result.stdout
    assert "in_progress" not in result.stdout  # the wave it was on says aborted


@pytest.mark.integration
@pytest.mark.rollouts
def test_rollout_start_watch_exits_7_when_the_rollout_is_aborted_while_watched(
    server: dict,
) -> None:
    api = server["api"]
    watcher = subprocess.Popen(
        [sys.executable, "-m", "edgeops.cli", "rollout", "start", "--release", server["target"],
         "--soak", "0", "--watch", "--json", *_connection(server)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        rollouts: list[dict] = []
        while not rollouts and time.monotonic() < deadline:
            rollouts = api.get("/api/rollouts").json()
            time.sleep(0.1)
        assert rollouts, "the watched rollout never started"
        api.post(f"/api/rollouts/{rollouts[0]['id']}/abort").raise_for_status()

        stdout, stderr = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
        watcher.wait()

    assert watcher.returncode == ExitCode.UPDATE, stdout + stderr
    assert '"status": "aborted"' in stdout


@pytest.mark.integration
@pytest.mark.rollouts
def test_rollout_failures_exit_with_their_codes(server: dict) -> None:
    conn = _connection(server)
    missing = run_edgeops("rollout", "status", "999", *conn)
    unreachable = run_edgeops("rollout", "status", "1", "--server", f"http://127.0.0.1:{free_port()}",
                              env={**os.environ, "EDGEOPS_TOKEN": "t"})
    no_token = run_edgeops("rollout", "list", env={"PATH": "/usr/bin:/bin"})
    bad_argument = run_edgeops("rollout", "status", "not-a-number")

    assert missing.returncode == ExitCode.NOT_FOUND, missing.stderr
    assert unreachable.returncode == ExitCode.TRANSPORT, unreachable.stderr
    assert no_token.returncode == ExitCode.CONFIG and "no API token" in no_token.stderr
    assert bad_argument.returncode == ExitCode.USAGE, bad_argument.stderr


def test_release_failures_exit_with_their_codes(tmp_path: Path) -> None:
    not_a_home = run_edgeops("release", "list", "--home", str(tmp_path / "nowhere"))
    bad_format = run_edgeops("release", "publish", "--home", str(tmp_path / "nowhere"),
                             "--package", str(tmp_path), "--format", "fp16")
    no_package = run_edgeops("release", "publish", "--home", str(tmp_path))

    assert not_a_home.returncode == ExitCode.CONFIG and "not a server home" in not_a_home.stderr
    assert bad_format.returncode == ExitCode.CONFIG and "int8 or fp32" in bad_format.stderr
    assert no_package.returncode == ExitCode.USAGE, no_package.stderr


@pytest.mark.parametrize(
    "command",
    [("rollout", "start"), ("rollout", "status"), ("rollout", "pause"), ("rollout", "resume"),
     ("rollout", "abort"), ("rollout", "list"), ("release", "publish"), ("release", "list")],
)
def test_every_exit_code_a_help_promises_is_produced(command: tuple[str, ...]) -> None:
    promised = _help_codes(*command)

    assert promised <= PRODUCED[command[0]], f"{' '.join(command)} --help promises {promised}"


def test_watch_helps_promise_7_for_an_aborted_rollout() -> None:
    assert ExitCode.UPDATE in _help_codes("rollout", "start")
    assert ExitCode.UPDATE in _help_codes("rollout", "status")
