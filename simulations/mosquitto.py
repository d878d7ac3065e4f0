"""Start a real Mosquitto on a free port with a generated config, and control it.

Used by `edgeops simulate` and by the test fixtures. The embedded Python brokers speak
only MQTT 3.1.1 and lose session state, so there is no fallback: a missing `mosquitto`
stops at once with the command that installs it.

The config is rendered by `server.identity.broker_config` (the same generator as
`edgeops server broker-config`); `MosquittoBroker.secured()` starts the production setup
(TLS, client certificates from the fleet CA, ACLs) on a free local port.
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
from server.config.settings import ServerSettings
from server.identity.broker_config import (
    MAX_QUEUED_MESSAGES,
    BrokerAuth,
    BrokerSpec,
    TlsFiles,
    render_mosquitto_conf,
    write_broker_config,
)
from simulations.processes import stop_process

INSTALL_HINT = "sudo apt-get install -y mosquitto   (macOS: brew install mosquitto)"
__all__ = ["MAX_QUEUED_MESSAGES", "MosquittoBroker", "find_mosquitto", "free_port", "wait_for_port"]
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

    `extra_config` lines are appended to the listener config. `auth`, `tls`, `acl_file` and
    `password_file` secure it (see `secured`). The port stays the same across
    stop/kill/restart so clients can reconnect.
    """

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    extra_config: list[str] = field(default_factory=list)
    allow_anonymous: bool = True
    process: subprocess.Popen | None = None
    auth: BrokerAuth | None = None  # None: "anonymous" if allow_anonymous else "password"
    tls: TlsFiles | None = None
    acl_file: Path | None = None
    password_file: Path | None = None

    @classmethod
    def secured(
        cls, workdir: Path, settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 0
    ) -> MosquittoBroker:
        """A broker configured as `edgeops server broker-config` would for `settings`
        (TLS, client certificates or passwords, ACLs), listening on a free local port."""
        workdir = Path(workdir)
        port = port or free_port(host)
        files = write_broker_config(
            settings, workdir, port=port, bind_host=host, hosts=(host, "localhost"),
            data_dir=workdir, log_file=workdir / "mosquitto.log",
        )
        spec = files.spec
        return cls(
            workdir=workdir, host=host, port=port, auth=spec.auth, tls=spec.tls,
            acl_file=spec.acl_file, password_file=spec.password_file,
        )

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.port = self.port or free_port(self.host)

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def spec(self) -> BrokerSpec:
        auth = self.auth or ("anonymous" if self.allow_anonymous else "password")
        return BrokerSpec(
            port=self.port,
            bind_host=self.host,
            auth=auth,
            tls=self.tls,
            acl_file=self.acl_file,
            password_file=self.password_file,
            data_dir=self.workdir,
            log_file=self.log_path,
            max_queued_messages=MAX_QUEUED_MESSAGES,
            # Run as root, Mosquitto drops to the `mosquitto` user, which cannot read our
            # private workdir (log, persistence, TLS key): keep the caller's user instead.
            extra=(*(("user root",) if os.geteuid() == 0 else ()), *self.extra_config),
        )

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_mosquitto_conf(self.spec))

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password and ACL files."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
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
        stop_process(self.process, timeout_s)
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

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
