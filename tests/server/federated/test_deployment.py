"""Flower's deployment runtime on loopback, as an operator runs it: a real `flower-superlink`
with TLS and SuperNode authentication, three registered `flower-supernode`s (EdgeOps'
ClientApp, each with its own local data file), and `flwr run examples/flower` submitting
2 SecAgg+ rounds whose result lands in the server's registry; a SuperNode whose key was
never registered is refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli_support import REPO_ROOT, run_edgeops
from tests.server.federated.support import recorded_training_runs

pytestmark = [pytest.mark.federated, pytest.mark.integration]

REPO = REPO_ROOT
APP_DIR = REPO / "examples" / "flower"
BIN = Path(sys.executable).parent
CONNECTION = "edgeops-loopback"
NUM_NODES = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_tls(where: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeops-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = where / "ca.crt", where / "server.pem", where / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


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
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b" "
        + name.encode()
        + b"\n"
    )
    private.chmod(0o600)
    return private, public


@dataclass
class Loopback:
    tmp: Path
    env: dict[str, str]
    port: int
    ca: Path
    server_home: Path
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=self.tmp,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: SuperExec and apps die with it
            )
        self.procs.append((proc, log))
        return proc, log

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=self.tmp,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def supernode(
        self, name: str, private_key: Path, node_config: str, *extra: str, executor: str = "flower"
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """A SuperNode whose ClientApps run under Flower's default subprocess isolation
        (`executor="flower"`: flower-superexec, one flwr-clientapp per message) or under
        `--isolation process` with EdgeOps' warm executor (`executor="warm"`)."""
        runtime_port = _free_port()
        if executor == "warm":
            extra = ("--isolation", "process", *extra)
        node = self.start(
            name,
            "flower-supernode",
            "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(self.ca),
            "--auth-supernode-private-key", str(private_key),
            "--host", "127.0.0.1",
            "--port", str(runtime_port),
            "--node-config", node_config,
            *extra,
        )
        if executor == "warm":
            self.start(
                f"{name}-executor",
                "python", "-m", "agent.federated.warm_executor",
                "--runtime-api-address", f"127.0.0.1:{runtime_port}",
            )
        return node

    def stop_all(self) -> None:
        for proc, _ in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may outlive its leader (SuperExec, ServerApp/ClientApp children)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5) if proc.poll() is None else None


def _wait_for_tls(port: int, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"SuperLink exited:\n{log.read_text()[-3000:]}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"SuperLink did not serve TLS on {port}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loopback]:
    tmp = tmp_path_factory.mktemp("flower-deployment")
    ca, cert, key = _write_tls(tmp)
    port = _free_port()
    flwr_home = tmp / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "127.0.0.1:{port}"\n'
        f'root-certificates = "{ca}"\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        # SuperExec (in the SuperLink and in every SuperNode) looks for a task to start
        # every 1 s by default; a flwr-clientapp starts per SecAgg+ message, 8 per node.
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    }
    server_home = tmp / "srv"
    init = run_edgeops("server", "init", "--home", str(server_home), cwd=tmp, env=env, timeout=60)
    assert init.returncode == 0, init.stderr
    lb = Loopback(tmp=tmp, env=env, port=port, ca=ca, server_home=server_home)
    try:
        superlink, log = lb.start(
            "superlink",
            "flower-superlink",
            "--ssl-ca-certfile", str(ca),
            "--ssl-certfile", str(cert),
            "--ssl-keyfile", str(key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--database", str(tmp / "superlink.db"),
        )
        _wait_for_tls(port, ca, superlink, log)
        yield lb
    finally:
        lb.stop_all()


def _log(lb: Loopback) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for _, p in lb.procs)


def _write_device_data(where: Path, index: int) -> Path:
    """Device `index`'s local data file: its slice of the digits training and held-out
    splits (what `partition-id`/`num-partitions` would cut), as an operator gives it to a
    SuperNode with `data-path`."""
    from agent.federated.local_data import load_local_data
    from edgeops.federated.config import ClientRecipe

    data = load_local_data(
        {"partition-id": index, "num-partitions": NUM_NODES}, ClientRecipe(task="digits")
    )
    path = where / f"device-{index}.npz"
    np.savez(
        path, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test
    )
    return path


# Where the time goes (2 shared cores; details in docs/federated.md): 2 rounds x 4 SecAgg+
# messages, and each SuperNode pauses 3 s after every empty pull (hard-coded in flwr 1.42),
# so ~3 s per message is the floor; the ServerApp's PollingGrid adds no more than 0.1 s.
# "warm" (what CI runs, ~40-50 s): `--isolation process` with EdgeOps' warm executor, which
# forks each message's ClientApp from a process that has imported flwr and torch once.
# "flower" (Flower's default subprocess isolation, ~55-65 s): a flwr-clientapp process per
# message imports flwr, and torch for the message that trains.
@pytest.mark.parametrize(
    "executor", ["warm", pytest.param("flower", marks=pytest.mark.slow)]
)
def test_three_registered_supernodes_train_two_secagg_rounds_over_tls(
    loopback: Loopback, executor: str
) -> None:
    lb = loopback
    keys = [_write_node_key(lb.tmp, f"device-{i}") for i in range(NUM_NODES)]
    with ThreadPoolExecutor(NUM_NODES) as pool:  # each `flwr` call starts a Python process
        registered = list(
            pool.map(lambda key: lb.flwr("supernode", "register", str(key[1]), CONNECTION), keys)
        )
    examples = 0
    for i, ((private, _), done) in enumerate(zip(keys, registered, strict=True)):
        assert done.returncode == 0, done.stdout + done.stderr
        assert "registered successfully" in done.stdout
        data_path = _write_device_data(lb.tmp, i)
        with np.load(data_path) as data:
            examples += len(data["y_train"])
        lb.supernode(
            f"supernode-{i}", private, f"data-path='{data_path}' task='digits'", executor=executor
        )

    run_config = (
        f"num-clients={NUM_NODES} num-rounds=2 local-epochs=1 fraction-evaluate=0.0 "
        "secagg.num-shares=3 secagg.reconstruction-threshold=2 secagg.timeout-s=60.0 "
        f"server-home='{lb.server_home}'"
    )
    started = time.monotonic()
    done = lb.flwr("run", str(APP_DIR), CONNECTION, "--run-config", run_config, "--stream",
                   timeout=240)
    out = done.stdout + done.stderr
    (lb.tmp / "flwr-run.log").write_text(out)
    assert done.returncode == 0, out[-4000:] + _log(lb)
    print(f"flwr run took {time.monotonic() - started:.1f} s")

    runs = recorded_training_runs(lb.server_home)
    assert len(runs) == 1, out[-4000:] + _log(lb)
    [run] = runs
    assert run["kind"] == "federated" and run["status"] == "succeeded"
    assert run["config"]["secagg_resolved"]["protocol"].startswith("SecAgg+")
    rounds = run["metrics"]["rounds"]
    assert [r["status"] for r in rounds] == ["aggregated", "aggregated"], rounds
    assert all(r["sampled"] == NUM_NODES and r["replied"] == NUM_NODES for r in rounds), rounds
    assert all(r["stage_seconds"] for r in rounds), rounds
    assert run["weights_sha256"]
    # The drift histogram went through SecAgg+: the sum over the 3 devices' local files.
    assert run["metrics"]["drift_reference"]["examples"] == examples
    # ... and the ClientApps ran where this variant says: flwr-clientapp processes that
    # Flower's SuperExec started (their output lands in the SuperNode's log), or children
    # of the warm executor.
    node_logs = "".join(
        log.read_text(errors="replace")
        for _, log in lb.procs
        if log.stem.startswith("supernode-") and not log.stem.endswith("-executor")
    )
    assert ("Start `flwr-clientapp` process" in node_logs) == (executor == "flower")


def test_an_unregistered_supernode_is_refused(loopback: Loopback) -> None:
    private, _ = _write_node_key(loopback.tmp, "intruder")  # never registered
    proc, log = loopback.supernode(
        "intruder", private, "partition-id=0 num-partitions=3", "--max-retries", "1",
        "--max-wait-time", "20",
    )
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"an unregistered SuperNode kept running:\n{log.read_text()[-3000:]}")
    text = log.read_text(errors="replace")
    superlink_log = loopback.procs[0][1].read_text(errors="replace")
    assert code != 0, text[-3000:]
    assert "Exit Code: 305" in text, text[-3000:]  # flwr's "SuperNode cannot connect" code
    assert "Failed to activate SuperNode" in text, text[-3000:]
    # ... and it is refused for its key, not for a network problem:
    assert "No SuperNode found with the given public key" in superlink_log, superlink_log[-3000:]
    assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in superlink_log


