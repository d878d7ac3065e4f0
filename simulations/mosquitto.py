"""Start a real Mosquitto on a free port with a generated config, and control it.

Used by `edgeops simulate` and by the test fixtures. The embedded Python brokers speak
only MQTT 3.1.1 and lose session state, so there is no fallback: a missing `mosquitto`
stops at once with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeops.errors import MissingDependencyError, TransportError

INSTALL_HINT = "sudo apt-get install -y mosquitto   (macOS: brew install mosquitto)"
# Mosquitto's default of 1,000 queued messages drops QoS 1 traffic to a slow subscriber.
MAX_QUEUED_MESSAGES = 1_000_000
# Debian installs the broker in sbin, which is not on a normal user's PATH.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or raise with the install command."""
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    found = shutil.which("mosquitto", path=search_path)
    if not found:
        raise MissingDependencyError(
            f"mosquitto (the MQTT broker) is not installed; install it with: {INSTALL_HINT}"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TransportError(f"nothing is listening on {host}:{port} after {timeout_s:.0f} s")


@dataclass
class MosquittoBroker:
    """One Mosquitto process with its own config, data and log in `workdir`.

    `extra_config` lines are appended to the listener config (ACLs, TLS, password file).
    The port stays the same across stop/kill/restart so clients can reconnect.
    """

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    extra_config: list[str] = field(default_factory=list)
    allow_anonymous: bool = True
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.port = self.port or free_port(self.host)

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "max_inflight_messages 0",
            "max_connections -1",
            "set_tcp_nodelay true",
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> "MosquittoBroker":
        binary = find_mosquitto()
        if self.process is not None and self.process.poll() is None:
            return self
        self.write_config()
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except TransportError as err:
            self.kill()
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise TransportError(f"mosquitto did not start on port {self.port}: {err}\n{log}") from err
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop: Mosquitto saves its persistence file."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to clients."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "MosquittoBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
