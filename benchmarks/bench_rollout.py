"""How fast a staged rollout reaches every device, and what the server costs meanwhile.

    python benchmarks/bench_rollout.py --quick        # 1,000 simulated devices
    python benchmarks/bench_rollout.py --full         # 10,000 (the issue's target case)
    python benchmarks/bench_rollout.py --devices 5000

Real parts: Mosquitto, `edgeops server run` as a subprocess (HTTP, MQTT ingest, the rollout
controller ticking every 0.5 s), one signed release. Simulated devices: plain MQTT 5 clients
(one connection and persistent session each, spread over several processes) that publish a
retained status, answer an `update` command with `downloading`, `health_window` then
`committed` statuses for the target (the health verdict the controller judges each wave
by: a wave passes only once `success_pct` of its devices report the target committed),
and a `rollback` with `running` on the previous release. They run no onnxruntime and
download nothing: this measures the controller, the broker and ingest, not OTA
(benchmarks/bench_ota.py does that).

The rollout uses the default waves (1%, 10%, 50%, 100%) with no soak time, so the time
measured is the machinery's own. In the same run, the controller's tick (read the
inventory, load the rollout, `decide`, persist the decision) is timed in-process on
synthetic fleets of 1,000, 5,000 and 10,000 devices in SQLite, driven through a whole
rollout: its cost per 1,000 devices at each size shows whether it stays linear.
Output: a table, then one JSON line with `devices`, `seconds_to_full`, `server_rss_mb`
and `tick_ms_per_1000_devices` ({fleet size: ms per tick per 1,000 devices}).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEVICES_PER_PROCESS = 1000  # sockets in one selector (epoll) per process
TARGET_S = 60.0
FULL_DEVICES = 10_000
TICK_SIZES = (1_000, 5_000, 10_000)


def simulate(first: int, count: int, host: str, port: int, prefix: str, release: str) -> None:
    """A process of simulated devices in one thread: every client's socket in one selector
    (paho's own loop thread per client would mean 10,000 threads at `--full`); prints
    "ready" once all are connected and runs until the parent closes our stdin."""
    import selectors

    import paho.mqtt.client as mqtt

    from edgeops.messages import Command, DeviceStatus, decode, encode

    clients: list[mqtt.Client] = []
    connected = [0]

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
            connected[0] += 1

        def on_message(client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
            command = decode(Command, message.payload)
            if command.kind == "update" and command.target:
                publish(client, "downloading", current["release"], command.target)
                current["previous"], current["release"] = current["release"], command.target
                publish(client, "health_window", command.target, command.target)
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
        return client

    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    for i in range(first, first + count):
        client = make(f"sim-{i:05d}")
        clients.append(client)
        selector.register(client.socket(), selectors.EVENT_READ, client)
    ready = False
    last_misc = time.monotonic()
    while True:
        for client in clients:
            if client.want_write():
                client.loop_write()
        for key, _events in selector.select(0.2):
            if key.data is None:
                if not sys.stdin.buffer.read1(1024):  # the parent closed our stdin
                    for client in clients:
                        client.disconnect()
                        client.loop_write()
                    return
                continue
            key.data.loop_read(max_packets=10)
        if time.monotonic() - last_misc > 1:
            last_misc = time.monotonic()
            for client in clients:
                client.loop_misc()
        if not ready and connected[0] >= count:
            ready = True
            print("ready", flush=True)


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
            time.sleep(0.25)  # each poll reads every assignment: do not load the server
        seconds = time.monotonic() - started
        rss_mb = process.memory_info().rss / 1e6
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
        return {
            "devices": devices,
            "status": r["status"],
            "seconds_to_full": round(seconds, 2),
            "wave_seconds": [round(w, 2) for w in waves],
            "connect_seconds": round(connect_s, 1),
            "server_rss_mb": round(rss_mb, 1),
            "server_peak_rss_mb": round(peak_rss / 1e6, 1),
            "load_average": " ".join(load),
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


def measure_ticks(size: int, workdir: Path) -> dict[str, float]:
    """The controller's tick on a synthetic fleet of `size` devices (SQLite in `workdir`),
    ticked through a whole rollout as the runner does: read the inventory, load the
    rollout, `decide`, save the decision, commit. Devices sent an update report it
    committed before the next tick (outside the time measured). Returns ms per tick per
    1,000 devices, for the whole tick and for `decide` alone."""
    from datetime import UTC, datetime

    from sqlalchemy import bindparam, update

    from server.db.engine import close_database, open_database
    from server.db.tables import Device, Rollout, RolloutDevice
    from server.rollouts import store
    from server.rollouts.controller import RolloutPolicy, assign_waves, decide

    factory = open_database(f"sqlite:///{workdir / f'ticks-{size}.db'}")
    try:
        start = datetime.now(UTC)
        ids = [f"sim-{i:05d}" for i in range(size)]
        with factory.begin() as session:
            session.execute(Device.__table__.insert(), [  # type: ignore[attr-defined]
                {"device_id": d, "online": True, "state": "running", "release": "v1",
                 "last_status_at": start, "first_seen_at": start} for d in ids
            ])
            rollout = Rollout(target="v2", tags=[], policy=RolloutPolicy(soak_s=0).to_json(),
                              status="running", active_scope="*", created_by="bench")
            session.add(rollout)
            session.flush()
            rollout_id = rollout.id
            session.execute(RolloutDevice.__table__.insert(), [  # type: ignore[attr-defined]
                {"rollout_id": rollout_id, "device_id": a.device_id, "position": position,
                 "wave": a.wave, "phase": a.phase}
                for position, a in enumerate(assign_waves(ids, RolloutPolicy().waves_pct))
            ])
        now = start.timestamp() + 1
        tick_s = decide_s = 0.0
        ticks = 0
        status = "running"
        while status == "running" and ticks < 50:
            began = time.perf_counter()
            with factory.begin() as session:
                observations = store.observe_devices(session)
                row = session.get(Rollout, rollout_id)
                assert row is not None
                state = store.load_state(session, row)
                decided = time.perf_counter()
                decision = decide(state, observations, now)
                decide_s += time.perf_counter() - decided
                store.save_decision(session, decision, row.revision, now)
            tick_s += time.perf_counter() - began
            ticks += 1
            status = decision.rollout.status
            sent = [a.device_id for a in decision.changed.values() if a.phase == "sent"]
            if sent:
                with factory.begin() as session:
                    session.execute(
                        update(Device.__table__)  # type: ignore[arg-type]
                        .where(Device.__table__.c.device_id == bindparam("b_id"))  # type: ignore[attr-defined]
                        .values(state="committed", release="v2", target="v2",
                                last_status_at=datetime.fromtimestamp(now + 0.5, UTC)),
                        [{"b_id": d} for d in sent],
                    )
            now += 1
        if status != "completed":
            raise RuntimeError(f"the synthetic rollout of {size} devices ended {status}")
    finally:
        close_database(factory)
    per = 1000 / ticks / (size / 1000)
    return {"tick": round(tick_s * per, 2), "decide": round(decide_s * per, 2),
            "ticks": ticks}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--simulate":
        first, count, host, port, prefix, release = sys.argv[2:8]
        simulate(int(first), int(count), host, int(port), prefix, release)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 devices (the target case)")
    parser.add_argument("--full", action="store_true",
                        help=f"{FULL_DEVICES:,} devices (the issue's 10k case)")
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    devices = FULL_DEVICES if args.full else 1000 if args.quick else args.devices
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        ticks = {size: measure_ticks(size, Path(tmp)) for size in TICK_SIZES}
        result = run(devices, Path(tmp))
    print(f"cores                {os.cpu_count()}")
    print(f"devices              {result['devices']} (simulated: {result['simulated_devices']})")
    print(f"devices connected in {result['connect_seconds']} s")
    print(f"rollout status       {result['status']}")
    print(f"waves passed at      {result['wave_seconds']} s")
    print(f"time to 100%         {result['seconds_to_full']} s (target <= {TARGET_S:.0f} s)")
    print(f"server RSS           {result['server_rss_mb']} MB (peak {result['server_peak_rss_mb']} MB)")
    for size, tick in ticks.items():
        print(f"tick, {size:>6} devices {tick['tick']} ms per 1,000 devices "
              f"(decide {tick['decide']} ms; {tick['ticks']} ticks to complete)")
    print(f"load average         {result['load_average']}")
    print(json.dumps({k: result[k] for k in ("devices", "seconds_to_full", "server_rss_mb")}
                     | {"tick_ms_per_1000_devices": {str(s): t["tick"] for s, t in ticks.items()},
                        "decide_ms_per_1000_devices": {str(s): t["decide"]
                                                       for s, t in ticks.items()},
                        "load_average": result["load_average"],
                        "status": result["status"], "simulated": True}))


if __name__ == "__main__":
    main()
