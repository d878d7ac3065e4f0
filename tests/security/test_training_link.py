"""Issue 16 item 1: the training link. A device network that can reach the SuperLink must
not reach its Control API (register SuperNodes, start runs that execute on the server host)
nor its Runtime API; a registered SuperNode on that network still connects and trains.

The device network is a network namespace of the test's own joined to the host by a veth
pair, so the "device" really connects from a non-loopback address. The SuperLink is started
the way docs/federated.md tells operators: `edgeops superlink` (SuperLink on loopback, a
gateway for the Fleet API on the host's veth address)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli_support import REPO_ROOT

pytestmark = [
    pytest.mark.security,
    pytest.mark.integration,
    pytest.mark.federated,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 to create a network namespace",
    ),
]

BIN = Path(sys.executable).parent
CONNECTION = "edgeops-link"


@dataclass(frozen=True)
class DeviceNetwork:
    namespace: str
    host_ip: str  # the host's end of the veth pair: where devices reach the server
    device_ip: str

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *args]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def device_network() -> Iterator[DeviceNetwork]:
    tag = secrets.token_hex(3)
    namespace, host_if, device_if = f"eo-{tag}", f"eo{tag}h", f"eo{tag}d"
    subnet = ipaddress.ip_network(f"10.213.{secrets.randbelow(256)}.{secrets.randbelow(64) * 4}/30")
    host_ip, device_ip = (str(a) for a in subnet.hosts())
    try:
        _ip("netns", "add", namespace)
    except subprocess.CalledProcessError as err:
        pytest.skip(f"cannot create a network namespace here: {err.stderr.decode().strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", device_if)
        _ip("link", "set", device_if, "netns", namespace)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        for args in (
            ("addr", "add", f"{device_ip}/30", "dev", device_if),
            ("link", "set", device_if, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("-n", namespace, *args)
        yield DeviceNetwork(namespace, host_ip, device_ip)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def _write_tls(where: Path, *ips: str) -> Tls:
    """A throwaway CA and a server certificate naming `ips` and localhost."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeops-link-test-ca")])
    key = ec.generate_private_key(ec.SECP384R1())
    ca_cert, cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips)]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
        for subject, public_key, is_ca in (
            (ca_name, ca_key.public_key(), True),
            (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ips[0])]), key.public_key(), False),
        )
    )
    tls = Tls(where / "ca.crt", where / "server.pem", where / "server.key")
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


def _write_node_key(where: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode identity: ECDSA P-384 in OpenSSH format (what ssh-keygen -t ecdsa makes)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = where / name, where / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {name}\n".encode()
    )
    return private, public


def _flwr_home(where: Path, address: str, ca: Path) -> Path:
    """A FLWR_HOME whose default connection is the SuperLink at `address`."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{address}"\nroot-certificates = "{ca}"\n'
    )
    return where


@dataclass
class Link:
    """The processes of one test: SuperLink (and gateway), SuperNodes, executors."""

    tmp: Path
    net: DeviceNetwork
    tls: Tls
    env: dict[str, str]
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.tmp,
                env=env or self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((proc, log))
        return log

    def flwr(self, flwr_home: Path, *args: str, device: bool) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "flwr"), *args]
        return subprocess.run(
            self.net.command(*argv) if device else argv,
            cwd=self.tmp,
            env={**self.env, "FLWR_HOME": str(flwr_home)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop_all(self) -> None:
        while self.procs:
            proc, _ = self.procs.pop()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}" for _, log in self.procs
        )


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Secured:
    """`edgeops superlink`, started once for the module."""

    link: Link
    fleet_port: int
    control_port: int

    @property
    def gateway_log(self) -> Path:
        return self.link.procs[0][1]


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, device_network: DeviceNetwork
) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("training-link")
    link = Link(tmp, device_network, _write_tls(tmp, device_network.host_ip, "127.0.0.1"), _env())
    try:
        yield Secured(link, *_start_edgeops_superlink(link))
    finally:
        link.stop_all()


@pytest.fixture
def link(tmp_path: Path, device_network: DeviceNetwork, secured: Secured) -> Iterator[Link]:
    """This test's own processes, with the same CA and server certificate."""
    lk = Link(tmp_path, device_network, secured.link.tls, _env())
    try:
        yield lk
    finally:
        lk.stop_all()


def _wait_for_port(host: str, port: int, link: Link, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc, _ in link.procs:
            assert proc.poll() is None, f"a process exited early:\n{link.logs()}"
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listened on {host}:{port}:\n{link.logs()}")


def _start_edgeops_superlink(link: Link) -> tuple[int, int]:
    """`edgeops superlink` as docs/federated.md runs it; returns (fleet port, control port)."""
    fleet_port, control_port = _free_port(), _free_port()
    link.start(
        "edgeops-superlink",
        [
            sys.executable, "-m", "edgeops.cli", "superlink",
            "--ca", str(link.tls.ca), "--cert", str(link.tls.cert), "--key", str(link.tls.key),
            "--state-dir", str(link.tmp / "superlink-state"),
            "--fleet-host", link.net.host_ip, "--fleet-port", str(fleet_port),
            "--control-port", str(control_port),
        ],
    )  # fmt: skip
    _wait_for_port(link.net.host_ip, fleet_port, link)
    return fleet_port, control_port


def _device_posts(link: Link, *urls: str) -> dict[str, str]:
    """POST an empty protobuf request to each URL from the device network (one process): the status
    code of each, or the class name of the connection error."""
    script = (
        "import httpx, json, sys\n"
        "H = {'content-type': 'application/protobuf'}\n"
        "out = {}\n"
        "for url in sys.argv[2:]:\n"
        "    try:\n"
        "        out[url] = str(httpx.post(url, content=b'', headers=H, verify=sys.argv[1], timeout=10).status_code)\n"
        "    except httpx.HTTPError as err:\n"
        "        out[url] = type(err).__name__\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        link.net.command(sys.executable, "-c", script, str(link.tls.ca), *urls),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_control_api_is_out_of_reach_of_the_device_network(
    link: Link, secured: Secured
) -> None:
    host_ip = link.net.host_ip
    _, intruder_key = _write_node_key(link.tmp, "intruder")

    # The attack, against the command the docs gave before: one flower-superlink on every
    # interface. From the device network, anyone registers a SuperNode key of their own
    # (so --enable-supernode-auth admits them) and reaches every Control call.
    port = _free_port()
    link.start(
        "documented-superlink",
        [
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile", str(link.tls.ca), "--ssl-certfile", str(link.tls.cert),
            "--ssl-keyfile", str(link.tls.key), "--enable-supernode-auth",
            "--database", str(link.tmp / "documented.db"), "--host", "0.0.0.0",
            "--port", str(port), "--disable-runtime-dependency-installation",
        ],
    )  # fmt: skip
    _wait_for_port(host_ip, port, link)
    open_home = _flwr_home(link.tmp / "attacker-open", f"{host_ip}:{port}", link.tls.ca)
    attack = link.flwr(
        open_home, "supernode", "register", str(intruder_key), CONNECTION, device=True
    )
    assert attack.returncode == 0 and "registered successfully" in attack.stdout, (
        attack.stdout + attack.stderr
    )
    reached = _device_posts(link, f"https://{host_ip}:{port}/v1/control/list-runs")
    assert list(reached.values()) == ["200"], reached
    link.stop_all()

    # The fix: `edgeops superlink`. The gateway on the device network serves no Control
    # or Runtime call, and the SuperLink itself does not listen there at all.
    fleet_port, control_port = secured.fleet_port, secured.control_port
    via_gateway = _flwr_home(link.tmp / "attacker-gw", f"{host_ip}:{fleet_port}", link.tls.ca)
    refused = link.flwr(
        via_gateway, "supernode", "register", str(intruder_key), CONNECTION, device=True
    )
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "registered successfully" not in refused.stdout
    gateway = f"https://{host_ip}:{fleet_port}"
    direct = f"https://{host_ip}:{control_port}"
    answers = _device_posts(
        link,
        gateway + "/v1/control/start-run",
        gateway + "/v1/control/register-node",
        gateway + "/v1/control/list-runs",
        gateway + "/v1/runtime/get-nodes",
        gateway + "/v1/fleet/../control/start-run",
        gateway + "/v1/fleet/%2e%2e/control/start-run",
        direct + "/v1/control/start-run",
        direct + "/v1/control/register-node",
    )
    assert answers == {
        **{url: "404" for url in answers if url.startswith(gateway)},
        **{url: "ConnectError" for url in answers if url.startswith(direct)},
    }, answers


def _wait_for_line(log: Path, text: str, client_ip: str, link: Link, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = log.read_text(errors="replace").splitlines()
        if any(text in line and f"{client_ip}:" in line for line in lines):
            return
        time.sleep(0.3)
    gateway = log.read_text(errors="replace")[-2500:]
    pytest.fail(f"no {text!r} from {client_ip} in {log}:\n{gateway}\n{link.logs()}")


def test_a_registered_supernode_on_the_device_network_connects_through_the_gateway(
    link: Link, secured: Secured
) -> None:
    fleet_port, control_port = secured.fleet_port, secured.control_port
    private, public = _write_node_key(link.tmp, "device-0")
    operator = _flwr_home(link.tmp / "operator", f"127.0.0.1:{control_port}", link.tls.ca)
    registered = link.flwr(operator, "supernode", "register", str(public), CONNECTION, device=False)
    assert registered.returncode == 0, registered.stdout + registered.stderr

    link.start(
        "supernode-0",
        link.net.command(
            str(BIN / "flower-supernode"),
            "--superlink", f"{link.net.host_ip}:{fleet_port}",
            "--root-certificates", str(link.tls.ca),
            "--auth-supernode-private-key", str(private),
            "--isolation", "process", "--host", "127.0.0.1", "--port", str(_free_port()),
            "--node-config", "partition-id=0 num-partitions=1",
        ),
    )  # fmt: skip
    # The gateway's access log names the device's own address: activated, then pulling
    # for work.
    device = link.net.device_ip
    for call in ("activate-node", "pull-messages"):
        _wait_for_line(secured.gateway_log, f'"POST /v1/fleet/{call} HTTP/1.1" 200', device, link)
    nodes = link.flwr(operator, "supernode", "list", CONNECTION, device=False)
    assert nodes.returncode == 0, nodes.stdout + nodes.stderr
    assert "online" in nodes.stdout.lower(), nodes.stdout
