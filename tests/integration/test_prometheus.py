"""A real Prometheus (Debian's package) scraping a real `edgeops server run` with the config
and alerting rules `edgeops server prometheus-config` writes. `/metrics` needs a token here,
so the scrape goes through `authorization: credentials_file`.

Prometheus missing fails the tests (CI installs it: `make monitoring-deps`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.app.home import init_home
from server.auth.tokens import create_token
from server.cli.prometheus import CONFIG_FILE, RULES_FILE
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.db.tables import Device
from simulations.mosquitto import MosquittoBroker, free_port, wait_for_port
from simulations.processes import stop_process
from tests.server.rollouts.fleet_support import ServerProcess

pytestmark = pytest.mark.integration

RULES_TEST = Path(__file__).with_name("prometheus_rules_test.yml")
TUF_ROLES = {"root", "targets", "snapshot", "timestamp"}
SCRAPE_TIMEOUT_S = 30.0


def _tool(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None
    )
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `make monitoring-deps` (apt-get install -y prometheus)"
        )
    return path


@dataclass(frozen=True)
class Served:
    home: Path
    url: str
    token_file: Path
    config_dir: Path  # what `edgeops server prometheus-config` wrote
    written: dict[str, Any]  # and printed (--json)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("prometheus")
    broker = MosquittoBroker(workdir=tmp / "mosquitto").start()
    settings = ServerSettings(
        home=tmp / "server",
        http_port=free_port(),
        broker_host=broker.host,
        broker_port=broker.port,
        allow_insecure_http=True,
        allow_insecure_mqtt=True,
        metrics_token=True,
    )
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    with factory.begin() as session:
        _token, secret = create_token(
            session, "prometheus", "viewer", "test", kind="service", owner="prometheus"
        )
        session.add_all(
            [Device(device_id=f"dev-{i}", online=i < 3, state="idle") for i in range(5)]
        )
    close_database(factory)
    token_file = tmp / "prometheus.token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    process = ServerProcess(
        settings.home, settings.http_host, settings.http_port, tmp / "server.log"
    )
    process.start()
    try:
        config_dir = tmp / "prometheus-config"
        written = _prometheus_config(settings.home, token_file, config_dir)
        yield Served(settings.home, settings.resolved_public_url, token_file, config_dir, written)
    finally:
        process.stop()
        broker.kill()


def _prometheus_config(home: Path, token_file: Path, out: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeops.cli",
            "server",
            "prometheus-config",
            "--home",
            str(home),
            "--out",
            str(out),
            "--token-file",
            str(token_file),
            "--scrape-interval",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written: dict[str, Any] = json.loads(result.stdout)
    return written


@pytest.fixture
def prometheus(served: Served, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Prometheus on a free port with the generated config: its URL and the config folder."""
    binary = _tool("prometheus")
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={served.config_dir / CONFIG_FILE}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port("127.0.0.1", port, 20)
        yield f"http://127.0.0.1:{port}", served.config_dir
    finally:
        stop_process(process, timeout_s=10)


def _api(url: str, path: str, **params: str) -> Any:
    reply = httpx.get(f"{url}/api/v1/{path}", params=params, timeout=10)
    reply.raise_for_status()
    body = reply.json()
    assert body["status"] == "success", body
    return body["data"]


def _wait_for_scrape(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        targets = _api(url, "targets")["activeTargets"]
        if targets and targets[0]["health"] == "up":
            return targets[0]
        time.sleep(0.5)
    raise AssertionError(f"no successful scrape within {SCRAPE_TIMEOUT_S}s: {targets}")


def test_a_real_prometheus_scrapes_the_fleet_gauges_with_the_token(
    served: Served, prometheus: tuple[str, Path]
) -> None:
    url, config_dir = prometheus
    check = subprocess.run(
        [_tool("promtool"), "check", "config", str(config_dir / CONFIG_FILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "credentials_file" in (config_dir / CONFIG_FILE).read_text()

    target = _wait_for_scrape(url)

    assert target["labels"]["job"] == "edgeops"
    assert target["scrapeUrl"] == f"{served.url}/metrics"
    fleet = _api(url, "query", query="sum by (online) (edgeops_fleet_devices)")["result"]
    assert {r["metric"]["online"]: r["value"][1] for r in fleet} == {"true": "3", "false": "2"}
    offline = _api(
        url,
        "query",
        query='sum(edgeops_fleet_devices{online="false"}) / sum(edgeops_fleet_devices)',
    )["result"]
    assert float(offline[0]["value"][1]) == pytest.approx(0.4)
    expiry = _api(url, "query", query="edgeops_tuf_metadata_expiry_timestamp_seconds - time()")
    assert {r["metric"]["role"] for r in expiry["result"]} == TUF_ROLES
    assert all(float(r["value"][1]) > 0 for r in expiry["result"])
    rules = _api(url, "rules")["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {
        "EdgeOpsDriftDetected",
        "EdgeOpsEstimatedAccuracyBelowGate",
        "EdgeOpsRolloutAborted",
        "EdgeOpsDevicesOffline",
        "EdgeOpsIngestRejecting",
        "EdgeOpsTufMetadataExpiring",
    }
    # 2 of 5 devices offline is above the default share of 0.2: firing after its 10 min
    # `for`, pending now (the rules evaluate each second here).
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not alerts:
        alerts = [
            a
            for a in _api(url, "alerts")["alerts"]
            if a["labels"]["alertname"] == "EdgeOpsDevicesOffline"
        ]
        time.sleep(0.5)
    assert alerts and alerts[0]["state"] == "pending", alerts


def test_metrics_pass_promtool_check_metrics(served: Served) -> None:
    anonymous = httpx.get(f"{served.url}/metrics", timeout=10)
    assert anonymous.status_code == 401  # metrics_token: the scrape config must send one

    token = served.token_file.read_text().strip()
    body = httpx.get(
        f"{served.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )

    assert body.status_code == 200
    result = subprocess.run(
        [_tool("promtool"), "check", "metrics"],
        input=body.text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_alert_fires_on_its_series_in_promtool_test_rules(
    served: Served, tmp_path: Path
) -> None:
    rules = Path(served.written["rules"])
    assert rules == (served.config_dir / RULES_FILE).resolve()
    shutil.copy(rules, tmp_path / RULES_FILE)
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)

    result = subprocess.run(
        [_tool("promtool"), "test", "rules", RULES_TEST.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
