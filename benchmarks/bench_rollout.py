"""How fast a staged rollout reaches every device, and what the server costs meanwhile.

    python benchmarks/bench_rollout.py --quick        # 1,000 simulated devices
    python benchmarks/bench_rollout.py --devices 5000

Real parts: Mosquitto, `edgeops server run` as a subprocess (HTTP, MQTT ingest, the rollout
controller ticking every 0.5 s), one signed release. Simulated devices: plain MQTT 5 clients
(one connection and persistent session each, spread over several processes) that publish a
retained status, answer an `update` command with `downloading` then `committed` statuses
for the target, and a `rollback` with `running` on the previous release. They run no
onnxruntime and download nothing: this measures the controller, the broker and ingest, not
OTA (benchmarks/bench_ota.py does that).

The rollout uses the default waves (1%, 10%, 50%, 100%) with no soak time, so the time
measured is the machinery's own. Output: a table, then one JSON line with `devices`,
`seconds_to_full`, `server_rss_mb`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEVICES_PER_PROCESS = 250  # paho waits on select(): keep each process's descriptors < 1024
TARGET_S = 60.0


def simulate(first: int, count: int, host: str, port: int, prefix: str, release: str) -> None:
    """A process of simulated devices; prints "ready" once all are connected."""
    import paho.mqtt.client as mqtt

    from edgeops.messages import Command, DeviceStatus, decode, encode

    clients = []
    connected = threading.Semaphore(0)

    def make(device_id: str) -> mqtt.Client:
        status_topic = f"{prefix}/devices/{device_id}/status"
        current = {"release": release}

        def publish(client: mqtt.Client, state: str, active: str, target: str | None) -> None:
            status = DeviceStatus(device_id=device_id, online=True, state=state,  # type: ignore[arg-type]
                                  model="digits", version=1, release=active, target=target)
            client.publish(status_topic, encode(status), qos=1, retain=True)

        def on_connect(client: mqtt.Client, *_args: object) -> None:
            client.subscribe(f"{prefix}/devices/{device_id}/cmd", qos=1)
            publish(client, "running", current["release"], None)
            connected.release()

        def on_message(client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
            command = decode(Command, message.payload)
            if command.kind == "update" and command.target:
                publish(client, "downloading", current["release"], command.target)
                current["previous"], current["release"] = current["release"], command.target
                publish(client, "committed", command.target, command.target)
            elif command.kind == "rollback" and "previous" in current:
                current["release"] = current.pop("previous")
                publish(client, "running", current["release"], command.target)

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                             protocol=mqtt.MQTTv5)
        client.on_connect = on_connect
        client.on_message = on_message
        client.will_set(status_topic, encode(DeviceStatus(device_id=device_id, online=False,
                                                          state="offline")), qos=1, retain=True)
        client.connect(host, port, keepalive=60)
        client.loop_start()
        return client

    for i in range(first, first + count):
        clients.append(make(f"sim-{i:05d}"))
    for _ in clients:
        connected.acquire(timeout=60)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    for client in clients:
        client.disconnect()
        client.loop_stop()


def run(devices: int, workdir: Path) -> dict[str, object]:
    import httpx
    import psutil

    from server.app.home import init_home
    from server.config.settings import ServerSettings, load_settings
    from server.db.engine import close_database, open_database
    from server.pipeline.publishing import publish_package
    from simulations.mosquitto import MosquittoBroker, free_port, wait_for_port
    from tests.server.helpers import make_package

    broker = MosquittoBroker(workdir=workdir / "mosquitto").start()
    sims: list[subprocess.Popen[bytes]] = []
    server = None
    try:
        settings = ServerSettings(home=workdir / "server", http_port=free_port(),
                                  broker_host=broker.host, broker_port=broker.port,
                                  allow_insecure_http=True, allow_insecure_mqtt=True)
        init_home(settings)
        settings = load_settings(settings.home)
        factory = open_database(settings.resolved_database_url)
        old = publish_package(settings, factory, make_package(workdir / "v1", seed=1), "int8")
        new = publish_package(settings, factory, make_package(workdir / "v2", seed=2), "int8")
        close_database(factory)
        log = open(workdir / "server.log", "wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "edgeops.cli", "server", "run", "--home", str(settings.home)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        wait_for_port(settings.http_host, settings.http_port, 60)
        t0 = time.monotonic()
        for first in range(0, devices, DEVICES_PER_PROCESS):
            sims.append(subprocess.Popen(
                [sys.executable, __file__, "--simulate", str(first),
                 str(min(DEVICES_PER_PROCESS, devices - first)), broker.host, str(broker.port),
                 f"{settings.topic_root}/{settings.fleet}", old.target_path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
            ))
        for sim in sims:
            assert sim.stdout is not None and sim.stdout.readline().strip() == b"ready"
        token = settings.admin_token_file.read_text().strip()
        http = httpx.Client(base_url=settings.resolved_public_url, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})

        def known() -> int:
            return sum(1 for d in http.get("/api/devices").json()
                       if d["online"] and d["release"] == old.target_path)

        while known() < devices:
            if time.monotonic() - t0 > 300:
                raise RuntimeError("the simulated devices did not all register")
            time.sleep(0.5)
        connect_s = time.monotonic() - t0
        process = psutil.Process(server.pid)
        peak_rss = process.memory_info().rss
        started = time.monotonic()
        response = http.post("/api/rollouts", json={"target": new.target_path, "soak_s": 0})
        response.raise_for_status()
        rollout_id = response.json()["id"]
        waves: list[float] = []
        while True:
            r = http.get(f"/api/rollouts/{rollout_id}").json()
            peak_rss = max(peak_rss, process.memory_info().rss)
            while len(waves) < len(r["waves"]) and r["waves"][len(waves)]["status"] == "passed":
                waves.append(time.monotonic() - started)
            if r["status"] not in ("running", "paused", "aborting"):
                break
            if time.monotonic() - started > 600:
                raise RuntimeError(f"rollout did not finish: {r}")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        rss_mb = process.memory_info().rss / 1e6
        return {
            "devices": devices,
            "status": r["status"],
            "seconds_to_full": round(seconds, 2),
            "wave_seconds": [round(w, 2) for w in waves],
            "connect_seconds": round(connect_s, 1),
            "server_rss_mb": round(rss_mb, 1),
            "server_peak_rss_mb": round(peak_rss / 1e6, 1),
            "simulated_devices": "paho MQTT clients answering commands; no onnxruntime, no download",
        }
    finally:
        for sim in sims:
            if sim.stdin is not None:
                sim.stdin.close()
        for sim in sims:
            try:
                sim.wait(20)
            except subprocess.TimeoutExpired:
                sim.kill()
        if server is not None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        broker.kill()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--simulate":
        first, count, host, port, prefix, release = sys.argv[2:8]
        simulate(int(first), int(count), host, int(port), prefix, release)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 devices (the target case)")
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    devices = 1000 if args.quick else args.devices
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        result = run(devices, Path(tmp))
    print(f"cores                {os.cpu_count()}")
    print(f"devices              {result['devices']} (simulated: {result['simulated_devices']})")
    print(f"devices connected in {result['connect_seconds']} s")
    print(f"rollout status       {result['status']}")
    print(f"waves passed at      {result['wave_seconds']} s")
    print(f"time to 100%         {result['seconds_to_full']} s (target <= {TARGET_S:.0f} s)")
    print(f"server RSS           {result['server_rss_mb']} MB (peak {result['server_peak_rss_mb']} MB)")
    print(json.dumps({k: result[k] for k in ("devices", "seconds_to_full", "server_rss_mb")}
                     | {"status": result["status"], "simulated": True}))


if __name__ == "__main__":
    main()
