"""Size limits and timeouts of the server's HTTP side (issue 16, item 3), on the real thing:
`edgeops server run` as a process (uvicorn, SQLite, a Mosquitto of its own), so the RSS
measured is the server's and the uvicorn options are the CLI's.

Each test makes the attack first (a 300 MB body, a chunked flood, a slowloris, a Range of
thousands of digits or ranges), then shows what refuses it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.api.body_limits import BODY_LIMITS
from server.api.http_range import MAX_RANGE_HEADER_CHARS
from server.app.home import init_home
from server.app.http_server import HEADER_TIMEOUT_S
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker, free_port
from tests.security.sockets import closed_after
from tests.server.helpers import make_package
from tests.server.rollouts.fleet_support import ServerProcess

pytestmark = [pytest.mark.security, pytest.mark.integration]

MIB = 1024 * 1024
ATTACK_BYTES = 300 * MIB
RSS_GROWTH_LIMIT_BYTES = 8 * MIB


@dataclass(frozen=True)
class Served:
    process: ServerProcess
    url: str
    artifact_path: str

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def cpu_s(self) -> float:
        """User plus system CPU time the server process has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("size-limits")
    broker = MosquittoBroker(workdir=tmp / "mosquitto").start()
    settings = ServerSettings(
        home=tmp / "server",
        http_port=free_port(),
        broker_host=broker.host,
        broker_port=broker.port,
        allow_insecure_http=True,
        allow_insecure_mqtt=True,
    )
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    release = publish_package(settings, factory, make_package(tmp / "package"), "int8")
    assert (tmp / "package" / "model.int8.onnx").stat().st_size > 2000  # room for 1,000 ranges
    close_database(factory)
    process = ServerProcess(
        settings.home, settings.http_host, settings.http_port, tmp / "server.log"
    )
    process.start()
    try:
        url = settings.resolved_public_url
        # Warm the code paths the tests measure, so their first use is not counted as growth.
        httpx.post(f"{url}/api/enroll", json={"token": "x"}, timeout=10)
        yield Served(
            process, url, f"/tuf/targets/digits/1/{release.artifact_sha256}.model.int8.onnx"
        )
    finally:
        process.stop()
        broker.kill()


def _connect(served: Served) -> socket.socket:
    host, port = served.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _send_flood(sock: socket.socket, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send `head` then `chunks` while a thread reads the reply; stop sending once its head
    arrived (or the server hangs up). The whole reply and how many body bytes went out."""
    reply = bytearray()
    answered = threading.Event()

    def read() -> None:
        try:
            while data := sock.recv(65536):
                reply.extend(data)
                if b"\r\n\r\n" in reply:
                    answered.set()
        except OSError:
            pass
        answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = 0
    try:
        sock.sendall(head)
        for chunk in chunks:
            if answered.is_set():
                break
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server closed the connection under the flood: what we want
        pass
    answered.wait(10)
    # The reply's head and body can arrive in two reads: keep reading until the server hangs
    # up (it answers `connection: close`), then close. Closing at the head lost the body.
    reader.join(10)
    sock.close()
    return bytes(reply), sent


def _status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply.split(b" ", 2)[1])


def test_a_300_mb_enroll_body_is_refused_before_it_is_read(served: Served) -> None:
    before = served.rss_bytes()
    block = bytes(MIB)  # one buffer, sent 300 times: the test allocates 1 MiB, not 300
    head = (
        b"POST /api/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {ATTACK_BYTES}\r\n\r\n".encode()
    )

    reply, sent = _send_flood(_connect(served), head, iter([block] * (ATTACK_BYTES // MIB)))

    assert _status(reply) == 413, reply[:300]
    assert b"connection: close" in reply.lower()
    assert sent < ATTACK_BYTES
    grown = served.rss_bytes() - before
    assert grown < RSS_GROWTH_LIMIT_BYTES, f"server RSS grew by {grown / MIB:.1f} MiB"


def test_a_chunked_enroll_body_is_cut_off_once_it_passes_the_cap(served: Served) -> None:
    before = served.rss_bytes()
    piece = bytes(64 * 1024)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    head = (
        b"POST /api/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    reply, sent = _send_flood(_connect(served), head, iter([chunk] * (ATTACK_BYTES // len(piece))))

    assert _status(reply) == 413, reply[:300]
    assert b"exceeds" in reply
    assert sent < 64 * MIB  # refused after the cap, not after the whole flood
    grown = served.rss_bytes() - before
    assert grown < RSS_GROWTH_LIMIT_BYTES, f"server RSS grew by {grown / MIB:.1f} MiB"


def test_small_bodies_still_reach_their_route(served: Served) -> None:
    enroll_cap = BODY_LIMITS["/api/enroll"]
    answer = httpx.post(
        f"{served.url}/api/enroll", json={"token": "t" * (enroll_cap // 2)}, timeout=10
    )
    assert answer.status_code not in (408, 413, 500), answer.text  # the route judged it


def test_a_slowloris_connection_is_closed_after_the_header_timeout(served: Served) -> None:
    waits = _connect(served)  # half a request line, then nothing
    drips = _connect(served)  # a header byte every second: never idle, never done
    waits.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    drips.sendall(b"GET /healthz HTTP/1.1\r\n")
    stop = threading.Event()

    def drip() -> None:
        try:
            while not stop.wait(1.0):
                drips.sendall(b"X")
        except OSError:
            pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        limit_s = HEADER_TIMEOUT_S + 5
        waited = closed_after(waits, limit_s)
        dripped = closed_after(drips, limit_s)
    finally:
        stop.set()
        dripper.join(5)
        waits.close()
        drips.close()
    assert waited is not None and waited <= HEADER_TIMEOUT_S + 2, "a stalled client is held"
    assert dripped is not None, "a client dripping one header byte a second is held"
    assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "range_header",
    [
        "bytes=" + "9" * 5000 + "-",  # int() of it raises past Python's 4,300-digit limit
        "bytes=0-" + "9" * 4000,
        # 1,000 disjoint ranges inside the file: a multipart reply of 1,000 parts
        "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 2000, 2)),
    ],
    ids=["5000-digit-start", "4000-digit-end", "1000-ranges"],
)
@pytest.mark.parametrize("what", ["metadata", "artifact"])
def test_an_absurd_range_header_is_refused_quickly(
    served: Served, what: str, range_header: str
) -> None:
    path = "/tuf/metadata/timestamp.json" if what == "metadata" else served.artifact_path
    assert len(range_header) > MAX_RANGE_HEADER_CHARS
    cpu_before = served.cpu_s()

    answer = httpx.get(f"{served.url}{path}", headers={"Range": range_header}, timeout=10)

    assert answer.status_code in (400, 416), (answer.status_code, answer.text[:200])
    assert served.cpu_s() - cpu_before < 0.5, "the server spent CPU on the Range header"
    ordinary = httpx.get(f"{served.url}{path}", headers={"Range": "bytes=0-9"}, timeout=10)
    assert (ordinary.status_code, len(ordinary.content)) == (206, 10)
