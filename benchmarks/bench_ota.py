"""OTA cost, through the real server (HTTP + TUF) and the real agent updater, measured
against what the same bytes cost without an update, in the same run.

    python benchmarks/bench_ota.py --quick     # under a minute: best of 3, a fleet of 50
    python benchmarks/bench_ota.py             # best of 10, a 10 MB size, a fleet of 200
    python benchmarks/bench_ota.py --quick --rtt-ms 50   # the older latency-only view

The fixed cost of an update is the TUF refresh (four sequential metadata round trips by
design, after the root N+1 probe) plus the durable journal, so a ratio to a bare download
says little at 1 MB. The last line printed is one JSON object with:

- `overhead_ms_1mb`: on loopback, what the update adds to a plain HTTP download of the same
  1 MB file to disk plus its SHA-256 (best of the baseline sampled 3 times per update);
- `link_ratio_1mb`: through `DelayLink` at 50 ms RTT and 10 Mbit/s each way, the 1 MB
  install time / (4 x RTT + the artifact's transfer time at link speed);
- `bytes_on_wire_ratio`: bytes the agent received under /tuf/targets/ to update a digits
  int8 release to its warm-started retrain / the retrain's full artifact (a delta);
  `unrelated_bytes_ratio`: the same for an unrelated model (no delta: the compressed copy
  or the artifact); `bytes_on_wire_ratio_with_metadata` adds the TUF metadata the update
  fetched (per-update bytes under `wire`);
- `ratio_50mb`: install time / plain download for 50 MB, and `rss_mb`, the agent's peak
  RSS during the loopback updates;
- `fleet_update_s_server`, `fleet_update_s_mirror`: `fleet_agents` agents (200; 50 with
  --quick) updating to the 1 MB release at once, from the server (uvicorn in its own
  process) and from nginx serving `edgeops release mirror` output (null, with the reason
  printed, without nginx: `make mirror-deps`), seconds to the last one committed;
  `fleet_bare_s`, the same clients each downloading the artifact plainly from the server;
  `server_cpu_s_per_gb`, the server process's CPU seconds during the server fleet / GB of
  bodies it sent (`fleet` holds the plain downloads' figure and each phase's CPU: on a
  small machine the clients' CPU bounds the fleet times). See ota_fleet.py.

Install time runs from the agent's `update` command to the model durably in its inactive
A/B slot (state `staged`, read from the journal): TUF refresh, download with the length and
hash check, staging. The server (uvicorn, TUF repository, artifact store) runs in this
process; the timed agent runs in a child process (this script with --agent) whose RSS is
sampled every 5 ms with psutil. `loopback` keeps every per-size figure (serving_ratio_*
goes on through the smoke test and the switch until the new model answers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ota_fleet import FLEET_AGENTS, fleet_figures
from ota_parts import CountingApp, PaddedRelease, plain_download, publish_padded

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the tests' models and helpers (tests.*)
SIZES_MB = (1, 10, 50)
PLAIN_SAMPLES = 3  # baseline downloads per timed update
LINK_RTT_MS, LINK_MBIT_S = 50.0, 10.0  # the link of `link_ratio_1mb`
QUICK_FLEET_AGENTS = 50  # 200 take ~30 s more, past --quick's minute


# The agent side (child process) -----------------------------------------------------------


def agent_main(spec_path: Path) -> None:
    from agent import Agent
    from edgeops.messages import Command

    spec = json.loads(spec_path.read_text())
    # Warm up imports and lazily built validators on a throwaway home (same code path,
    # its own metadata cache), so the timed updates measure steady-state work.
    from agent.config import load_config as _load
    from agent.ota.model_store import ModelStore
    from agent.ota.updater import ReleaseUpdater

    warm = _load(Path(spec["warmup_home"]))
    ReleaseUpdater(warm, ModelStore(warm.home)).lookup(next(iter(spec["sizes"].values()))["target"])
    download_to = Path(spec["warmup_home"]) / "plain-download.bin"
    plain_download(next(iter(spec["sizes"].values()))["url"], download_to)
    results: dict[str, Any] = {}
    for size, item in spec["sizes"].items():
        plain: list[float] = []
        install: list[float] = []
        serving: list[float] = []
        for home in item["homes"]:
            # The baseline is cheap, so it is sampled 3 times per update: the first download
            # after an update (whose writeback and freed pages are still settling) can take
            # 2-3x its steady time, and a baseline taken only there flatters the ratio.
            plain.extend(plain_download(item["url"], download_to) for _ in range(PLAIN_SAMPLES))
            from agent.config import load_config

            agent = Agent(load_config(Path(home))).start()
            try:
                started_wall, started = time.time(), time.perf_counter()
                status = agent.handle_command(Command(kind="update", target=item["target"]))
                serving.append(time.perf_counter() - started)
                if status.state not in ("health_window", "committed"):
                    raise SystemExit(f"update failed: {status.reason}")
            finally:
                agent.stop(timeout_s=1)
            history = json.loads((Path(home) / "update_state.json").read_text())["history"]
            install.append(dict(history)["staged"] - started_wall)
        results[size] = {"plain_s": min(plain), "install_s": min(install), "serving_s": min(serving)}
    print(json.dumps(results), flush=True)


# A link with latency -----------------------------------------------------------------------


class DelayLink:
    """A TCP relay in front of the server: every byte is delayed by half the round trip each
    way and, with `mbit_s`, paced to that rate each way (a byte leaves only once the bytes
    before it have gone); a new connection costs one round trip (the TCP handshake). The
    baseline and the update share it."""

    def __init__(self, upstream_port: int, rtt_s: float, mbit_s: float | None = None) -> None:
        self._upstream_port = upstream_port
        self._rtt_s = rtt_s
        self._bytes_per_s = None if mbit_s is None else mbit_s * 1e6 / 8
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._run, name="delay-link", daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self._rtt_s)  # SYN, SYN-ACK
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        await asyncio.gather(
            self._pump(client_reader, server_writer), self._pump(server_reader, client_writer)
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        wire_free_at = 0.0  # when the bytes already queued have left (rate-limited links)

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            # Small reads, so a paced link delivers in steps of ~13 ms at 10 Mbit/s.
            while data := await reader.read(16 * 1024):
                sent_at = loop.time()
                if self._bytes_per_s is not None:
                    wire_free_at = max(wire_free_at, sent_at) + len(data) / self._bytes_per_s
                    sent_at = wire_free_at
                queue.put_nowait((sent_at + self._rtt_s / 2, data))
        except OSError:
            pass
        queue.put_nowait((max(loop.time(), wire_free_at) + self._rtt_s / 2, b""))
        try:
            await sender
        except OSError:
            pass


# The server side and the measurement -------------------------------------------------------


def run(quick: bool, rtt_ms: float = 0.0, mbit_s: float | None = None,
        sizes_mb: tuple[int, ...] = SIZES_MB) -> dict[str, Any]:
    import psutil
    import uvicorn

    from agent import AgentConfig, init_agent_home
    from server.app.build import build_app
    from server.app.home import init_home
    from server.config.settings import ServerSettings
    from server.registry.artifact_store import ArtifactStore
    from server.trust.repository import TufRepository
    from tests.agent.support import install_model

    repeats = 3 if quick else 10
    work = Path(tempfile.mkdtemp(prefix="bench-ota-"))
    settings = ServerSettings(home=work / "server")
    init_home(settings)
    repository, store = TufRepository(settings.tuf_dir), ArtifactStore(settings.artifacts_dir)

    base = publish_padded(repository, store, work, 1, 0)
    sizes: dict[str, Any] = {}
    releases: dict[str, PaddedRelease] = {}
    for i, size_mb in enumerate(sizes_mb):
        published = publish_padded(repository, store, work, 10 + i, size_mb * 1024 * 1024)
        releases[f"{size_mb}mb"] = published
        sizes[f"{size_mb}mb"] = {"target": published.target, "homes": [], "bytes": published.size}

    app = build_app(settings, with_fleet=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    if rtt_ms > 0:
        port = DelayLink(port, rtt_ms / 1000, mbit_s).port
    url = f"http://127.0.0.1:{port}"
    root = (settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
    for key, item in sizes.items():
        item["url"] = releases[key].url(url)
        for r in range(repeats):
            home = work / f"agent-{key}-{r}"
            config = AgentConfig(
                home=home, device_id=f"bench-{key}-{r}", server_url=url, broker_port=9,
                health_window_s=0.0, health_min_samples=0,
            )
            init_agent_home(home, config, root)
            install_model(home, base.info, base.path.read_bytes())
            item["homes"].append(str(home))
    warmup_home = work / "agent-warmup"
    init_agent_home(
        warmup_home,
        AgentConfig(home=warmup_home, device_id="bench-warmup", server_url=url, broker_port=9),
        root,
    )
    spec = work / "spec.json"
    spec.write_text(json.dumps({"sizes": sizes, "warmup_home": str(warmup_home)}))
    child = subprocess.Popen(
        [sys.executable, __file__, "--agent", str(spec)],
        stdout=subprocess.PIPE, cwd=REPO_ROOT, text=True,
    )
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.005)
    output = child.stdout.read() if child.stdout else ""
    server.should_exit = True
    thread.join(10)
    if child.returncode != 0:
        raise SystemExit(f"agent child failed ({child.returncode})")
    timings = json.loads(output.strip().splitlines()[-1])
    result: dict[str, Any] = {}
    for key, value in timings.items():
        plain, install, serving = value["plain_s"], value["install_s"], value["serving_s"]
        print(
            f"{key:>5}: plain HTTP + SHA-256 {plain * 1e3:7.1f} ms   OTA install {install * 1e3:7.1f} ms "
            f"(ratio {install / plain:.2f})   serving {serving * 1e3:7.1f} ms (ratio {serving / plain:.2f})"
        )
        result[f"ratio_{key}"] = round(install / plain, 3)
        result[f"serving_ratio_{key}"] = round(serving / plain, 3)
        result[f"plain_ms_{key}"] = round(plain * 1e3, 2)
        result[f"install_ms_{key}"] = round(install * 1e3, 2)
        result[f"overhead_ms_{key}"] = round((install - plain) * 1e3, 2)  # what OTA adds
        result[f"serving_ms_{key}"] = round(serving * 1e3, 2)
        result[f"artifact_bytes_{key}"] = sizes[key]["bytes"]
    result["rss_mb"] = round(peak / 1e6, 1)
    result["rtt_ms"] = rtt_ms
    result["mode"] = "quick" if quick else "full"
    return result


def wire_bytes() -> dict[str, Any]:
    """Bytes the agent receives to update from a digits int8 release to (a) its warm-started
    retrain, (b) an unrelated model, each as a ratio to the full artifact. The models are
    trained, exported and quantized as `edgeops model package` does (tests/edgeops/
    delta_models.py); the server publishes them with its deltas and compressed copies."""
    import shutil
    from datetime import UTC, datetime

    from agent import Agent, AgentConfig, init_agent_home
    from edgeops.messages import Command
    from server.app.build import build_app
    from server.app.home import init_home
    from server.config.settings import ServerSettings
    from server.db.engine import close_database, open_database
    from server.db.tables import Device
    from server.pipeline.publishing import publish_package
    from server.registry.artifact_store import ArtifactStore
    from tests.agent.support import install_model
    from tests.edgeops.delta_models import build_delta_models, write_package
    from tests.server.helpers import live_server

    work = Path(tempfile.mkdtemp(prefix="bench-ota-wire-"))
    models = build_delta_models(work / "models")
    settings = ServerSettings(home=work / "server", http_port=0)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    try:
        v1 = publish_package(settings, factory, write_package(work / "v1", models.base))
        with factory.begin() as session:  # a device of the fleet runs v1: deltas from it
            session.add(Device(device_id="fleet-1", online=True, model="digits", version=1,
                               release=v1.target_path,
                               first_seen_at=datetime.now(UTC).replace(tzinfo=None)))
        v2 = publish_package(settings, factory, write_package(work / "v2", models.retrain))
        v3 = publish_package(settings, factory, write_package(work / "v3", models.unrelated))
    finally:
        close_database(factory)
    store = ArtifactStore(settings.artifacts_dir)
    root = (settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
    app = CountingApp(build_app(settings, with_fleet=False))
    result: dict[str, Any] = {}
    with live_server(app) as url:
        for name, release in (("retrain", v2), ("unrelated", v3)):
            home = work / f"device-{name}"
            config = AgentConfig(home=home, device_id=f"wire-{name}", server_url=url,
                                 broker_port=9, health_window_s=0.0, health_min_samples=0)
            init_agent_home(home, config, root)
            install_model(home, v1.release_info, store.path_for(v1.artifact_sha256).read_bytes())
            app.targets_bytes = app.metadata_bytes = 0
            agent = Agent(config).start()
            try:
                status = agent.handle_command(Command(kind="update", target=release.target_path))
                if status.state == "update_failed" or not agent.wait_for_state("committed", 20):
                    raise SystemExit(f"{name} update failed: {agent.status().reason}")
            finally:
                agent.stop(timeout_s=2)
            full = store.path_for(release.artifact_sha256).stat().st_size
            result[name] = {"full_bytes": full, "received_bytes": app.targets_bytes,
                            "metadata_bytes": app.metadata_bytes}
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="best of 3 updates per size (seconds)")
    parser.add_argument(
        "--rtt-ms", type=float, default=0.0, metavar="MS",
        help="put the server behind a relay adding this round-trip time (default: loopback)",
    )
    parser.add_argument("--agent", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent is not None:
        if os.environ.get("BENCH_OTA_PROFILE"):
            import cProfile

            cProfile.runctx("agent_main(args.agent)", globals(), {"args": args}, os.environ["BENCH_OTA_PROFILE"])
        else:
            agent_main(args.agent)
        return
    if args.rtt_ms > 0:  # the old latency-only view, kept for comparison
        print(json.dumps(run(args.quick, args.rtt_ms)))
        return
    loopback = run(args.quick, sizes_mb=(1, 50) if args.quick else SIZES_MB)
    link = run(args.quick, LINK_RTT_MS, LINK_MBIT_S, sizes_mb=(1,))
    wire = wire_bytes()
    fleet = fleet_figures(QUICK_FLEET_AGENTS if args.quick else FLEET_AGENTS)
    transfer_s = link["artifact_bytes_1mb"] * 8 / (LINK_MBIT_S * 1e6)
    floor_s = 4 * LINK_RTT_MS / 1000 + transfer_s
    figures = {
        "overhead_ms_1mb": loopback["overhead_ms_1mb"],
        "link_ratio_1mb": round(link["install_ms_1mb"] / 1e3 / floor_s, 3),
        "bytes_on_wire_ratio": round(wire["retrain"]["received_bytes"] / wire["retrain"]["full_bytes"], 3),
        # The same with the TUF metadata the update fetched (its targets carry every
        # release's custom: golden vectors, drift reference), which no delta shrinks.
        "bytes_on_wire_ratio_with_metadata": round(
            (wire["retrain"]["received_bytes"] + wire["retrain"]["metadata_bytes"])
            / wire["retrain"]["full_bytes"], 3),
        "unrelated_bytes_ratio": round(
            wire["unrelated"]["received_bytes"] / wire["unrelated"]["full_bytes"], 3),
        "ratio_50mb": loopback["ratio_50mb"],
        "rss_mb": loopback["rss_mb"],
        **fleet,
        "link_install_ms_1mb": link["install_ms_1mb"],
        "link_floor_ms_1mb": round(floor_s * 1e3, 1),
        "link": {"rtt_ms": LINK_RTT_MS, "mbit_s": LINK_MBIT_S},
        "wire": wire,
        "loopback": loopback,
        "mode": "quick" if args.quick else "full",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
