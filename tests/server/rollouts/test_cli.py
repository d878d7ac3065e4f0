"""`edgeops rollout` and `edgeops fleet` against a live server (no broker: nothing ticks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeops.cli import root
from server.app.build import build_app
from server.app.home import init_home
from server.cli.rollout import render_rollout
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import publish_package
from tests.server.helpers import free_port, live_server, make_package
from tests.server.rollouts.conftest import add_devices

pytestmark = pytest.mark.rollouts


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict]:
    settings = ServerSettings(home=tmp_path / "server", broker_port=free_port())
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    release = publish_package(settings, factory, make_package(tmp_path / "p", seed=1), "int8")
    add_devices(factory, ["a-1", "a-2", "a-3"])
    with live_server(build_app(settings)) as url:
        yield {"url": url, "home": str(settings.home), "target": release.target_path}
    close_database(factory)


def edgeops(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(root, list(args), standalone_mode=False, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.mark.integration
def test_rollout_commands_mirror_the_api(server: dict) -> None:
    conn = ["--home", server["home"], "--server", server["url"]]
    _, out = edgeops("fleet", "label", "a-1", "--group", "lab", "--tag", "eu", *conn, "--json")
    assert json.loads(out)["group"] == "lab"
    _, out = edgeops("fleet", "ls", "--group", "lab", *conn, "--json")
    assert [d["device_id"] for d in json.loads(out)["devices"]] == ["a-1"]

    _, out = edgeops("rollout", "start", "--release", server["target"], "--group", "lab",
                     "--soak", "0", *conn, "--json")
    rollout = json.loads(out)
    assert rollout["devices"] == 1 and rollout["status"] == "running"
    _, out = edgeops("rollout", "pause", str(rollout["id"]), *conn, "--json")
    assert json.loads(out)["status"] == "paused"
    _, out = edgeops("rollout", "status", str(rollout["id"]), *conn)
    assert "[paused]" in out and "wave 1" in out
    _, out = edgeops("rollout", "list", *conn, "--json")
    assert [r["id"] for r in json.loads(out)["rollouts"]] == [rollout["id"]]
    _, out = edgeops("rollout", "abort", str(rollout["id"]), *conn, "--json")
    assert json.loads(out)["status"] == "aborting"

    from edgeops.errors import RegistryError

    with pytest.raises(RegistryError, match="409"):
        edgeops("rollout", "resume", str(rollout["id"]), *conn)


def test_render_rollout_draws_waves() -> None:
    text = render_rollout({
        "id": 3, "target": "m/2/model.onnx", "group": None, "status": "running",
        "reason": None, "done": 5, "failed": 1, "devices": 10, "progress_pct": 50.0,
        "current_wave": 2, "wave_count": 2, "phases": {"succeeded": 5, "failed": 1, "sent": 4},
        "waves": [{"index": 1, "done": 1, "failed": 0, "devices": 1, "status": "passed"},
                  {"index": 2, "done": 4, "failed": 1, "devices": 9, "status": "in_progress"}],
    })
    assert "rollout 3" in text and "wave 2" in text and "failed 1, sent 4" in text
