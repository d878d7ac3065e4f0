"""Mirror test parts: Debian's nginx serving a folder of mirrors on a free port, and a real
server home whose releases `edgeops release mirror` copies into that folder.

Each test starts its own nginx (`daemon off`, one process, pid, temp and log paths under
the test's folder, errors to stderr) and stops it afterwards; without nginx the tests skip
naming the make target that installs it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.app.home import init_home
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import PublishedRelease, publish_package
from simulations.processes import stop_process
from tests.cli_support import run_edgeops
from tests.server.helpers import free_port, make_package

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_MISSING = "Debian's nginx is not installed (make mirror-deps installs it)"

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {run}/nginx.pid;
error_log stderr warn;
events {{ worker_connections {connections}; }}
http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def nginx_available() -> bool:
    return Path(NGINX).is_file()


@dataclass
class Nginx:
    """A running nginx serving `root` at `url` (which ends with '/')."""

    root: Path
    url: str
    run_dir: Path
    process: subprocess.Popen[bytes]

    def mirror_url(self, name: str) -> str:
        return f"{self.url}{name}/"

    def requests(self) -> list[str]:
        """The request lines logged so far (`GET /m1/metadata/timestamp.json` ...)."""
        log = self.run_dir / "access.log"
        if not log.exists():
            return []
        return [line.split('"')[1] for line in log.read_text().splitlines() if '"' in line]


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _out, err = process.communicate()
            raise RuntimeError(f"nginx exited with {process.returncode}: {err.decode()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not answer on port {port} within {timeout_s} s")


def start_nginx(root: Path, run_dir: Path, *, connections: int = 64) -> Nginx:
    """Start nginx serving `root` on a free port, with up to `connections` open at once;
    the caller stops it with `stop_nginx`."""
    root.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = run_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run_dir, port=port, root=root, connections=connections))
    process = subprocess.Popen(
        [NGINX, "-p", str(run_dir), "-e", "stderr", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, process)
    except BaseException:
        stop_nginx(process)
        raise
    return Nginx(root, f"http://127.0.0.1:{port}/", run_dir, process)


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, timeout_s=5)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """nginx serving `tmp_path/www` (put each mirror in a folder under it)."""
    if not nginx_available():
        pytest.skip(NGINX_MISSING)
    server = start_nginx(tmp_path / "www", tmp_path / "nginx")
    try:
        yield server
    finally:
        stop_nginx(server.process)


@dataclass
class ServerHome:
    """A server home (no live server) with releases published as the pipeline does."""

    settings: ServerSettings
    tmp_path: Path
    releases: list[PublishedRelease] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.settings.home

    def publish(self, seed: int) -> PublishedRelease:
        factory = open_database(self.settings.resolved_database_url)
        try:
            package = make_package(self.tmp_path / f"package-{seed}", seed=seed)
            released = publish_package(self.settings, factory, package, "int8")
        finally:
            close_database(factory)
        self.releases.append(released)
        return released

    def mirror(self, to: Path, *extra: str) -> dict[str, Any]:
        """Run `edgeops release mirror --to TO --json` as a user does; its JSON report."""
        import json

        done = run_edgeops("release", "mirror", "--home", str(self.home), "--to", str(to),
                           "--json", *extra)
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    @property
    def trusted_root(self) -> bytes:
        return (self.settings.tuf_dir / "metadata" / "1.root.json").read_bytes()


def server_home(tmp_path: Path) -> ServerHome:
    settings = ServerSettings(home=tmp_path / "server")
    init_home(settings)
    return ServerHome(settings, tmp_path)
