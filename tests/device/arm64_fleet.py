"""One arm64 device in a real fleet, from a bare root to a rolled-back release.

On the host: a server (HTTP API, TUF repository, ingest) and a Mosquitto configured as
`edgeops server broker-config` writes it (TLS, client certificates, ACLs). In the emulated
arm64 root, with only the `edgeops` command a user installed there:

    edgeops agent init     the trusted TUF root and the server's and broker's addresses
    edgeops agent enroll   a one-time token and the fleet CA's pinned fingerprint -> a
                           certificate for a key made on the device
    edgeops agent run      the daemon, until SIGTERM

Then: a signed int8 release (statically quantized on the host, its golden vectors taken on
x86-64 and checked by the device on aarch64) is deployed over the air; predictions are
served by the agent's local API and telemetry reaches the server; a second int8 release
that is signed and passes its smoke test but is useless (near-uniform outputs) is deployed
and the device rolls back to the first on its health check.

`run_device_scenario` returns the figures the benchmark prints; any step that does not
happen raises AssertionError naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from edgeops.ca_pin import ca_fingerprint
from edgeops.packaging.golden import build_golden
from edgeops.packaging.quantize import QuantizationConfig, quantize_onnx
from edgeops.schemas import HealthPolicy
from server.app.build import build_app
from server.app.home import init_home, read_admin_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.identity.ca import FleetCA
from server.pipeline.publishing import PublishedRelease, publish_package
from simulations.mosquitto import MosquittoBroker, free_port
from tests.device.arm64 import EDGEOPS, Arm64Root
from tests.integration.fleet_support import wait_until
from tests.server.helpers import INPUT_SCHEMA, NUM_CLASSES, NUM_FEATURES, live_server

__all__ = ["DEVICE_ID", "DeviceFigures", "make_int8_package", "run_device_scenario"]

DEVICE_ID = "arm64-1"
DEVICE_DIR = "/var/lib/edgeops-device"  # inside the root: the agent home and its inputs
HOME = f"{DEVICE_DIR}/home"
PREDICTIONS = 60  # for the p50; they are also the health check's baseline for the old model
# Emulation makes every step slower (an agent start takes seconds): generous deadlines.
ONLINE_TIMEOUT_S = 180
UPDATE_TIMEOUT_S = 180
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DeviceFigures:
    root_build_s: float  # 0 when the cached root was reused
    agent_install_s: float  # 0 when the checkout was already installed in the root
    enroll_s: float  # agent init + enroll inside the root
    setup_s: float  # all of the above and until the device is online at the server
    update_s: float  # deploy -> the server sees the device run the release
    rollback_s: float  # deploy of the regressing release -> the server sees rolled_back
    predict_p50_ms: float  # local API round trip from the host, one sample
    agent_rss_mb: float  # peak RSS of the agent process (the emulator included)
    root: str

    def to_json(self) -> dict[str, Any]:
        return {
            k: round(v, 3) if isinstance(v, float) else v
            for k, v in dataclasses.asdict(self).items()
        }


def make_int8_package(
    directory: Path, *, seed: int, scale: float = 1.0, health: HealthPolicy | None = None
) -> Path:
    """A model package as `edgeops model package` writes it: a MatMul + Softmax classifier in
    fp32 and statically quantized int8 (QDQ), golden vectors measured here. A small `scale`
    makes a model that runs fine and is useless (near-uniform outputs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = (rng.normal(0, 0.1, (NUM_FEATURES, NUM_CLASSES)) * scale).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "arm64-device",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, NUM_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, NUM_CLASSES])],
        initializer=[numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fp32, int8 = directory / "model.fp32.onnx", directory / "model.int8.onnx"
    onnx.save(model, str(fp32))
    calibration = rng.uniform(0, 16, (128, NUM_FEATURES)).astype(np.float32)
    quantize_onnx(fp32, int8, input_name="input", config=QuantizationConfig(),
                  calibration=calibration)  # fmt: skip
    golden_inputs = rng.uniform(0, 16, (4, NUM_FEATURES)).astype(np.float32)
    release_info: dict[str, Any] = {}
    for fmt, path in (("fp32", fp32), ("int8", int8)):
        golden, _ = build_golden(path, golden_inputs, fmt, input_name="input")  # type: ignore[arg-type]
        release_info[fmt] = {
            "schema": 1, "model": "digits", "format": fmt, "input": INPUT_SCHEMA,
            "output_name": "probabilities", "num_classes": NUM_CLASSES,
            "golden": golden.model_dump(mode="json"),
            **({"health": health.model_dump(mode="json")} if health is not None else {}),
        }  # fmt: skip
    report = {
        "sha256": {f: hashlib.sha256(p.read_bytes()).hexdigest() for f, p in (("fp32", fp32), ("int8", int8))},
        "model": "digits",
        "task": "edgeops.tasks.digits:digits",
        "release_info": release_info,
        "metrics": {"fp32": {"accuracy": 0.97}, "int8": {"accuracy": 0.96}},
        "lineage": {"data_fingerprint": "a" * 64, "code_version": "arm64-device"},
    }  # fmt: skip
    (directory / "report.json").write_text(json.dumps(report))
    return directory


@dataclass
class _Fleet:
    url: str
    settings: ServerSettings
    broker: MosquittoBroker
    http: httpx.Client
    good: PublishedRelease
    regressing: PublishedRelease

    def device(self) -> dict[str, Any]:
        response = self.http.get(f"/api/devices/{DEVICE_ID}")
        return response.json() if response.status_code == 200 else {}

    def deploy(self, release: PublishedRelease) -> None:
        response = self.http.post("/api/deployments", json={"target": release.target_path})
        assert response.status_code == 202, f"deploy {release.target_path}: {response.text}"

    def enroll_token(self) -> str:
        response = self.http.post("/api/enroll/tokens", json={"device_id": DEVICE_ID})
        assert response.status_code == 201, f"enroll token: {response.text}"
        return str(response.json()["token"])


@contextmanager
def _fleet(work: Path) -> Iterator[_Fleet]:
    settings = ServerSettings(home=work / "server", broker_tls=True)
    init_home(settings)
    broker = MosquittoBroker.secured(work / "broker", settings).start()
    settings = dataclasses.replace(settings, broker_port=broker.port)
    sessions = open_database(settings.resolved_database_url)
    try:
        quick = HealthPolicy(window_s=0, min_samples=0)
        # The useless release is judged on 3 s and 20 predictions against the old model's.
        strict = HealthPolicy(window_s=3, min_samples=20, max_window_s=120, max_confidence_drop=0.2)
        good = publish_package(
            settings, sessions, make_int8_package(work / "v1", seed=1, health=quick)
        )
        regressing = publish_package(
            settings, sessions, make_int8_package(work / "v2", seed=2, scale=0.01, health=strict)
        )
        auth = {"Authorization": f"Bearer {read_admin_token(settings)}"}
        with (
            live_server(build_app(settings)) as url,
            httpx.Client(base_url=url, headers=auth, timeout=30) as http,
        ):
            yield _Fleet(url, settings, broker, http, good, regressing)
    finally:
        close_database(sessions)
        broker.kill()


class _DeviceProcess:
    """`edgeops agent run` inside the root, its own process group, stopped with SIGTERM."""

    def __init__(self, root: Arm64Root, log: Path) -> None:
        env = {"EDGEOPS_AGENT_TELEMETRY_INTERVAL_S": "1"}
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            root.command([EDGEOPS, "agent", "run", "--home", HOME, "--log-format", "json"], env),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.log_path = log
        self.peak_rss = 0

    def agent(self) -> psutil.Process | None:
        """The emulated python running the agent (the innermost process of the chain)."""
        try:
            top = psutil.Process(self.process.pid)
            chain = [top, *top.children(recursive=True)]
            agents = [p for p in chain if "agent" in " ".join(p.cmdline())]
        except psutil.NoSuchProcess:
            return None
        return agents[-1] if agents else None

    def sample_rss(self) -> None:
        agent = self.agent()
        if agent is not None:
            try:
                self.peak_rss = max(self.peak_rss, agent.memory_info().rss)
            except psutil.NoSuchProcess:
                pass

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"the agent in the root exited {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout_s: float = 60) -> int:
        agent = self.agent()
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()
        return self.process.returncode


def run_device_scenario(work: Path, progress: Progress = print) -> DeviceFigures:
    started = time.monotonic()
    root = Arm64Root.ensure()
    progress(f"arm64 root {root.path} ({_took(root.built_s, 'cached')})")
    with root.in_use():
        return _run(root, work, progress, started)


def _run(root: Arm64Root, work: Path, progress: Progress, started: float) -> DeviceFigures:
    install_s = root.install_agent(work)
    progress(f"agent installed in the root ({_took(install_s, 'unchanged')})")
    device_dir = root.host_path(DEVICE_DIR)
    shutil.rmtree(device_dir, ignore_errors=True)
    (device_dir / "in").mkdir(parents=True)
    with _fleet(work) as fleet:
        enroll_started = time.monotonic()
        _enroll(root, fleet, device_dir)
        enroll_s = time.monotonic() - enroll_started
        progress(f"enrolled {DEVICE_ID} in {enroll_s:.0f} s")
        device = _DeviceProcess(root, work / "agent.log")
        try:
            _wait(device, "the device online at the server", lambda: fleet.device().get("online"),
                  ONLINE_TIMEOUT_S)  # fmt: skip
            setup_s = time.monotonic() - started
            progress(f"device online ({setup_s:.0f} s since start)")

            update_s = _update(fleet, device, fleet.good, "committed")
            progress(f"int8 release v{fleet.good.version} committed after {update_s:.1f} s")

            p50_ms, rollback_s = _serve_and_roll_back(root, fleet, device, progress)
        finally:
            code = device.stop()
        assert code == 0, f"the agent exited {code} on SIGTERM:\n{device.log_tail()}"
        wait_until(lambda: not fleet.device().get("online"), 30, "the device offline at the server")
    return DeviceFigures(
        root_build_s=root.built_s, agent_install_s=install_s, enroll_s=enroll_s, setup_s=setup_s,
        update_s=update_s, rollback_s=rollback_s, predict_p50_ms=p50_ms,
        agent_rss_mb=device.peak_rss / 2**20, root=str(root.path),
    )  # fmt: skip


def _serve_and_roll_back(
    root: Arm64Root, fleet: _Fleet, device: _DeviceProcess, progress: Progress
) -> tuple[float, float]:
    """Predictions on the good release (their p50, and telemetry), then the regressing
    release under traffic until it is rolled back (seconds)."""
    with _local_api(root) as api:
        latencies = [_predict(api, fleet.good.version) for _ in range(PREDICTIONS)]
        device.sample_rss()
        p50_ms = statistics.median(latencies) * 1000
        progress(f"predict p50 {p50_ms:.1f} ms over {PREDICTIONS} local API calls")
        _wait(device, "telemetry at the server",
              lambda: fleet.device().get("telemetry_messages", 0) >= 1, 60)  # fmt: skip

        with _traffic(api):
            rollback_s = _update(fleet, device, fleet.regressing, "rolled_back")
        after = fleet.device()
        reason = after.get("reason") or ""
        assert after["version"] == fleet.good.version, f"after the rollback: {after}"
        assert "health window regression" in reason, f"rollback: {after}"
        _predict(api, fleet.good.version)
    progress(f"v{fleet.regressing.version} rolled back after {rollback_s:.1f} s: {reason}")
    return p50_ms, rollback_s


def _took(seconds: float, otherwise: str) -> str:
    return f"{seconds:.0f} s" if seconds else otherwise


def _enroll(root: Arm64Root, fleet: _Fleet, device_dir: Path) -> None:
    """`edgeops agent init` then `enroll` in the root, as the operator's instructions say."""
    shutil.copy2(
        fleet.settings.tuf_dir / "metadata" / "1.root.json", device_dir / "in" / "root.json"
    )
    token_file = device_dir / "in" / "token"
    token_file.write_text(fleet.enroll_token())
    token_file.chmod(0o600)
    pin = ca_fingerprint(FleetCA.for_settings(fleet.settings).ca_pem)
    broker = f"127.0.0.1:{fleet.broker.port}"
    root.run([EDGEOPS, "agent", "init", "--home", HOME, "--device-id", DEVICE_ID,
              "--server", fleet.url, "--broker", broker, "--root", f"{DEVICE_DIR}/in/root.json",
              "--http-port", str(free_port())])  # fmt: skip
    root.run([EDGEOPS, "agent", "enroll", "--home", HOME, "--ca-fingerprint", pin,
              "--token-file", f"{DEVICE_DIR}/in/token", "--broker", broker])  # fmt: skip
    token_file.unlink()


def _wait(device: _DeviceProcess, what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    def checked() -> Any:
        device.check_alive()
        device.sample_rss()
        return probe()

    try:
        return wait_until(checked, timeout_s, what)
    except AssertionError as err:
        raise AssertionError(f"{err}\nagent log:\n{device.log_tail()}") from None


def _update(fleet: _Fleet, device: _DeviceProcess, release: PublishedRelease, state: str) -> float:
    deployed = time.monotonic()
    fleet.deploy(release)
    expected = fleet.good.version
    _wait(
        device, f"the device in state {state!r} on v{expected} after deploying v{release.version}",
        lambda: (d := fleet.device()).get("state") == state and d.get("version") == expected,
        UPDATE_TIMEOUT_S,
    )  # fmt: skip
    return time.monotonic() - deployed


def _local_api(root: Arm64Root) -> httpx.Client:
    """A client of the agent's local inference API, with the token the device made."""
    home = root.host_path(HOME)
    settings = (home / "agent.toml").read_text()
    port = next(int(line.split("=")[1]) for line in settings.splitlines()
                if line.startswith("http_port"))  # fmt: skip
    token = (home / "api_token").read_text().strip()
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip


_INPUTS = np.random.default_rng(7).uniform(0, 16, (256, NUM_FEATURES)).astype(np.float32)


def _predict(api: httpx.Client, version: int | None = None) -> float:
    """One local prediction; its round-trip seconds."""
    sample = _INPUTS[np.random.default_rng().integers(len(_INPUTS))]
    sent = time.monotonic()
    response = api.post("/predict", json={"inputs": [sample.tolist()]})
    elapsed = time.monotonic() - sent
    assert response.status_code == 200, (
        f"local API /predict: {response.status_code} {response.text}"
    )
    if version is not None:
        assert response.json()["version"] == version, f"served by {response.json()['version']}"
    return elapsed


@contextmanager
def _traffic(api: httpx.Client) -> Iterator[None]:
    """Predictions in the background, so the health window has samples to judge."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                _predict(api)
            except (AssertionError, httpx.HTTPError):
                pass  # a model swap in progress; the health window needs volume, not each call
            stop.wait(0.02)

    thread = threading.Thread(target=loop, name="arm64-traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
