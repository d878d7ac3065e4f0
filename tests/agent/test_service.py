"""The agent as a systemd service: the unit `edgeops agent install-service` writes (checked
by systemd's own `systemd-analyze verify`), the notify protocol `agent run` speaks on a real
datagram socket, and its log lines in the journal and JSON formats."""

from __future__ import annotations

import configparser
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, init_agent_home
from agent.logging_setup import configure_logging, resolve_log_format, rollout_id_of
from agent.service import ServiceSpec, render_unit
from agent.systemd_notify import Notifier
from edgeops.errors import ConfigError
from edgeops.exit_codes import ExitCode
from tests.agent.support import TufTestRepository
from tests.cli_support import run_edgeops

COMMAND = (sys.executable, "-m", "edgeops.cli")
# An interpreter where an install puts it: where the checkout running the tests lies (under
# /tmp or /home) changes PrivateTmp and ProtectHome, which the unit then relaxes for it.
INSTALLED = ("/opt/edgeops/venv/bin/python", "-m", "edgeops.cli")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    where = tmp_path / "agent-home"
    config = AgentConfig(
        home=where,
        device_id="dev-9",
        server_url="http://127.0.0.1:9",
        broker_port=9,
        http_port=None,
    )
    init_agent_home(where, config, TufTestRepository(tmp_path / "repo").root_bytes)
    return where


def unit_service_section(text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return parser["Service"]


def test_the_unit_confines_the_agent_to_its_home(tmp_path: Path) -> None:
    spec = ServiceSpec(home=Path("/var/lib/edgeops-agent"), command=INSTALLED, memory_max="256M")

    service = unit_service_section(render_unit(spec))

    assert service["ExecStart"].endswith(
        "-m edgeops.cli -v agent run --home /var/lib/edgeops-agent --log-format journal"
    )
    assert (service["User"], service["Group"]) == ("edgeops", "edgeops")
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/edgeops-agent"
    assert service["MemoryMax"] == "256M"
    assert (service["Type"], service["WatchdogSec"]) == ("notify", "30")
    assert (service["ProtectHome"], service["PrivateTmp"]) == ("yes", "yes")


def test_a_home_under_home_or_tmp_stays_reachable() -> None:
    under_home = unit_service_section(render_unit(ServiceSpec(Path("/home/pi/agent"), COMMAND)))
    under_tmp = unit_service_section(
        render_unit(ServiceSpec(Path("/tmp/agent"), COMMAND, watchdog_s=0))
    )

    assert under_home["ProtectHome"] == "read-only"  # ReadWritePaths re-opens the home itself
    assert under_tmp["PrivateTmp"] == "no"
    assert "WatchdogSec" not in under_tmp


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"home": Path("relative/home")}, "absolute path"),
        ({"user": "Root User"}, "valid system user"),
        ({"memory_max": "lots"}, "--memory-max 'lots'"),
        ({"name": "../evil"}, "service name"),
        ({"command": ("edgeops",)}, "absolute path"),
    ],
)
def test_bad_settings_are_named(change: dict[str, object], needle: str) -> None:
    settings: dict[str, object] = {"home": Path("/var/lib/a"), "command": COMMAND, **change}

    with pytest.raises(ConfigError, match=needle):
        ServiceSpec(**settings)  # type: ignore[arg-type]


@pytest.mark.integration
def test_install_service_writes_a_unit_systemd_accepts(home: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(
            "systemd-analyze is not installed (make service-deps installs Debian's systemd)"
        )
    unit = tmp_path / "edgeops-agent.service"

    done = run_edgeops(
        "agent", "install-service", "--home", str(home), "--output", str(unit), "--json"
    )

    assert done.returncode == ExitCode.OK, done.stderr
    result = json.loads(done.stdout)
    assert result["unit"] == str(unit)
    assert "sudo systemctl enable --now edgeops-agent.service" in result["enable"]
    assert any(step.startswith("sudo useradd --system") for step in result["enable"])
    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_unit_path_that_cannot_be_written_is_named(home: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    done = run_edgeops(
        "agent", "install-service", "--home", str(home), "--output", str(blocker / "x.service")
    )

    assert done.returncode == ExitCode.CONFIG
    assert f"cannot write the unit {blocker / 'x.service'}" in done.stderr
    assert "Traceback" not in done.stderr


# The notify protocol -----------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    yield sock
    sock.close()


def test_the_watchdog_is_fed_at_half_its_interval(notify_socket: socket.socket) -> None:
    now = [0.0]
    notifier = Notifier(notify_socket.getsockname(), watchdog_s=10.0, clock=lambda: now[0])

    for now[0] in (0.0, 1.0, 4.9, 5.0, 9.0, 10.1):
        notifier.feed_watchdog()

    notify_socket.settimeout(0.2)
    received = []
    while True:
        try:
            received.append(notify_socket.recv(64))
        except TimeoutError:
            break
    assert received == [b"WATCHDOG=1"] * 3  # at 0, 5 and 10.1
    assert notifier.tick_s == 1.0


def test_the_environment_decides_what_is_sent(notify_socket: socket.socket) -> None:
    path = notify_socket.getsockname()
    other_pid = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}

    assert Notifier.from_environment({}).notify("READY=1") is False  # not under systemd
    assert Notifier.from_environment(other_pid).watchdog_s is None  # not this process's
    mine = Notifier.from_environment({**other_pid, "WATCHDOG_PID": str(os.getpid())})
    assert (mine.watchdog_s, mine.tick_s) == (4.0, 1.0)


@pytest.mark.integration
def test_agent_run_notifies_ready_feeds_the_watchdog_and_logs_json(
    home: Path, notify_socket: socket.socket
) -> None:
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify_socket.getsockname(),
        "WATCHDOG_USEC": "1000000",
    }
    process = subprocess.Popen(
        [*COMMAND, "-v", "agent", "run", "--home", str(home), "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = notify_socket.recv(256)
        fed = [notify_socket.recv(64) for _ in range(2)]  # about one every 0.5 s
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    stopping = notify_socket.recv(64)

    assert ready.startswith(b"READY=1\nSTATUS=agent dev-9 running")
    assert fed == [b"WATCHDOG=1", b"WATCHDOG=1"]
    assert stopping == b"STOPPING=1"
    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert {(line["device_id"], line["release"], line["rollout_id"]) for line in lines} == {
        ("dev-9", None, None)
    }
    assert any(line["message"].startswith("agent dev-9 stopped") for line in lines)


# Log formats ---------------------------------------------------------------------------


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[Path]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield tmp_path / "log.txt"
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def fields() -> dict[str, str | None]:
    return {
        "device_id": "dev-1",
        "release": "digits/v3.int8.onnx",
        "rollout_id": rollout_id_of("rollout-12-update-1712"),
    }


def log_in(log_format: str, path: Path) -> str:
    with path.open("w") as stream:
        handler = configure_logging(log_format, fields, level=logging.INFO, stream=stream)  # type: ignore[arg-type]
        logging.getLogger("agent.daemon").warning("update %s failed", "v3")
        logging.getLogger("agent.daemon").debug("not shown")
        handler.flush()
    return path.read_text()


def test_journal_lines_carry_a_priority_and_the_fields_but_no_time(captured: Path) -> None:
    text = log_in("journal", captured)

    assert text == (
        "<4>agent.daemon: update v3 failed device_id=dev-1 release=digits/v3.int8.onnx rollout_id=12\n"
    )


def test_json_lines_are_one_object_each(captured: Path) -> None:
    [line] = log_in("json", captured).splitlines()

    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "warning",
        "agent.daemon",
        "update v3 failed",
    )
    assert (entry["device_id"], entry["release"], entry["rollout_id"]) == (
        "dev-1",
        "digits/v3.int8.onnx",
        "12",
    )
    assert entry["ts"].endswith("+00:00")


def test_auto_picks_the_journal_only_when_stderr_is_it(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as stream:
        stat = os.fstat(stream.fileno())
        journal = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}

        assert resolve_log_format("auto", journal, stream) == "journal"
        assert resolve_log_format("auto", {"JOURNAL_STREAM": "1:2"}, stream) == "text"
        assert resolve_log_format("json", journal, stream) == "json"


def test_only_rollout_commands_name_a_rollout() -> None:
    assert rollout_id_of("rollout-7-rollback-1712000000000") == "7"
    assert rollout_id_of("3f2a9c0d4e5b6a7c") is None
    assert rollout_id_of(None) is None


@pytest.mark.integration
def test_a_started_agent_reports_alive(home: Path) -> None:
    from agent.daemon import Agent

    agent = Agent(
        AgentConfig(
            home=home,
            device_id="dev-9",
            server_url="http://127.0.0.1:9",
            broker_port=9,
            http_port=None,
        )
    )
    assert not agent.alive
    agent.start()
    try:
        deadline = time.monotonic() + 5
        while not agent.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.alive
    finally:
        agent.stop(timeout_s=2)
    assert not agent.alive
