"""bench_ota's fleet phase (issue 17): N agents updating at once, from the server and from a
static mirror, against the same N clients downloading the artifact plainly, in one run.

    python benchmarks/ota_fleet.py [--agents 200]   # the fleet figures alone, as JSON

Everything is real and runs in its own process: the server is uvicorn with the app
`edgeops server run` serves (its HTTP limits; no MQTT ingest, which an update does not
use), wrapped only to count the body bytes it sends; the mirror is Debian's nginx serving
the folder `edgeops release mirror --to DIR` writes; the agents are full `Agent`s (real
updater, fetcher, HTTP, A/B store and durable journal), each with its own home, spread over
a few worker processes (this script with `worker SPEC`) so the fleet is not bound to one
core by the GIL. Each agent has the padded 1 MB release's base installed and is sent the
`update` command at once (as a rollout's MQTT command arrives: queued to its worker thread);
the time runs from that moment to the last agent `committed` (its journal's timestamp).

Figures: `fleet_update_s_server`, `fleet_update_s_mirror` (null, with the reason printed,
when nginx is missing), `fleet_bare_s` (the same clients each GETting the artifact into a
file with its SHA-256: the floor), and `server_cpu_s_per_gb`: the server process's user +
system CPU seconds during the server phase / GB of response bodies it sent (metadata and
artifact); `bare_server_cpu_s_per_gb` is the same for the plain downloads.
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
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ota_parts import COUNTS_PATH, CountingApp, PaddedRelease, plain_download, publish_padded

if TYPE_CHECKING:
    from agent import AgentConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the tests' helpers (tests.*)

FLEET_AGENTS = 200
FLEET_WORKERS = 2  # worker processes hosting the agents (the machine's cores)
ARTIFACT_BYTES = 1024 * 1024  # the release the fleet installs: the 1 MB of overhead_ms_1mb
PHASE_TIMEOUT_S = 300.0


# The server process -------------------------------------------------------------------------


def serve_main(home: Path) -> None:
    """Serve the server home `home` on a free loopback port (printed first) until SIGTERM."""
    import socket

    import uvicorn

    from server.app.build import build_app
    from server.app.http_server import uvicorn_limits
    from server.config.settings import load_settings

    app = CountingApp(build_app(load_settings(home), with_fleet=False), answer_counts=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    config = uvicorn.Config(app, log_level="warning", **uvicorn_limits())
    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def served_bytes(self) -> int:
        with urllib.request.urlopen(self.url + COUNTS_PATH, timeout=10) as response:  # noqa: S310
            return int(json.loads(response.read())["total_bytes"])


def start_server(home: Path) -> ServerProcess:
    process = subprocess.Popen(
        [sys.executable, __file__, "serve", str(home)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"the server process exited ({process.wait()})")
    server = ServerProcess(process, f"http://127.0.0.1:{json.loads(line)['port']}")
    deadline = time.monotonic() + 30
    while True:
        try:
            server.served_bytes()
            return server
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.05)


# The worker processes (the fleet's clients) --------------------------------------------------


def worker_main(spec_path: Path) -> None:
    """Host the spec's clients; print a line when ready, start at a line on stdin, print
    the outcome as one JSON line."""
    spec = json.loads(spec_path.read_text())
    if spec["mode"] == "bare":
        _bare_clients(spec)
    else:
        _update_clients(spec)


def _bare_clients(spec: dict[str, Any]) -> None:
    go = threading.Event()
    ended: list[float] = []

    def client(home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        go.wait()
        plain_download(spec["artifact_url"], home / "artifact.bin")
        ended.append(time.time())

    threads = [threading.Thread(target=client, args=(Path(h),), daemon=True) for h in spec["homes"]]
    for thread in threads:
        thread.start()
    warm = Path(spec["warmup_home"])
    warm.mkdir(parents=True, exist_ok=True)
    plain_download(spec["artifact_url"], warm / "artifact.bin")
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    cpu = _cpu_s()
    go.set()
    for thread in threads:
        thread.join(PHASE_TIMEOUT_S)
    print(json.dumps({"done_at": max(ended, default=0.0), "failed": len(threads) - len(ended),
                      "reasons": [], "cpu_s": _cpu_s() - cpu}), flush=True)


def _cpu_s() -> float:
    """This process's CPU seconds so far, user + system, all threads."""
    times = os.times()
    return times.user + times.system


def _agent_config(spec: dict[str, Any], home: Path) -> AgentConfig:
    from agent import AgentConfig

    return AgentConfig(
        home=home, device_id=f"fleet-{home.name}", server_url=spec["server_url"],
        mirrors=tuple(spec["mirrors"]), broker_port=9,  # no broker: status goes nowhere
        health_window_s=0.0, health_min_samples=0,
    )


def _update_clients(spec: dict[str, Any]) -> None:
    from agent import Agent, init_agent_home
    from agent.ota.model_store import ModelStore
    from agent.ota.updater import ReleaseUpdater
    from edgeops.messages import Command
    from edgeops.schemas import ReleaseInfo
    from tests.agent.support import install_model

    root = Path(spec["root"]).read_bytes()
    base_info = ReleaseInfo.from_custom(spec["base_info"])
    base_data = Path(spec["base_path"]).read_bytes()
    agents = []
    for home in map(Path, spec["homes"]):
        config = init_agent_home(home, _agent_config(spec, home), root)
        install_model(home, base_info, base_data)
        agents.append(Agent(config).start())
    # Imports and lazily built validators are warmed on a throwaway home (its own metadata
    # cache), so the fleet measures steady-state work.
    warm = Path(spec["warmup_home"])
    warm_config = init_agent_home(warm, _agent_config(spec, warm), root)
    ReleaseUpdater(warm_config, ModelStore(warm)).lookup(spec["target"])
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    cpu = _cpu_s()
    for agent in agents:
        agent.submit_command(Command(kind="update", target=spec["target"]))
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    records = []
    for agent in agents:
        while time.monotonic() < deadline:
            record = agent.update_record
            if record is not None and record.target == spec["target"] and record.terminal:
                records.append(record)
                break
            time.sleep(0.01)
    cpu = _cpu_s() - cpu
    committed = [dict(r.history)["committed"] for r in records if r.state == "committed"]
    reasons = sorted({f"{r.state}: {r.reason}" for r in records if r.state != "committed"})
    print(json.dumps({"done_at": max(committed, default=0.0), "failed": len(agents) - len(committed),
                      "reasons": reasons[:3], "cpu_s": cpu}), flush=True)
    stoppers = [threading.Thread(target=agent.stop, args=(2.0,)) for agent in agents]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()


# A phase: the clients of every worker start at once -----------------------------------------


@dataclass(frozen=True)
class Phase:
    seconds: float  # from the start to the last client done (committed, downloaded)
    server_cpu_s: float
    served_bytes: int  # response bodies the server sent
    client_cpu_s: float  # the worker processes' CPU, from the start to their last client done

    @property
    def cpu_s_per_gb(self) -> float | None:
        return None if self.served_bytes == 0 else self.server_cpu_s / (self.served_bytes / 1e9)


def run_phase(name: str, work: Path, server: ServerProcess, agents: int,
              spec: dict[str, Any]) -> Phase:
    """Start FLEET_WORKERS workers hosting `agents` clients of `spec`, wait until all are
    ready, start them at once, and time them to the last client done."""
    homes = [work / name / f"{i:04d}" for i in range(agents)]
    workers = []
    try:
        for w in range(FLEET_WORKERS):
            path = work / f"{name}-worker-{w}.json"
            path.write_text(json.dumps({**spec, "homes": [str(h) for h in homes[w::FLEET_WORKERS]],
                                        "warmup_home": str(work / name / f"warmup-{w}")}))
            workers.append(subprocess.Popen(
                [sys.executable, __file__, "worker", str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT, text=True,
            ))
        for worker in workers:
            _read_line(worker, name)
        cpu, served = server.cpu_s(), server.served_bytes()
        started = time.time()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [_read_line(worker, name) for worker in workers]
        cpu, served = server.cpu_s() - cpu, server.served_bytes() - served
        for worker in workers:
            worker.wait(60)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    failed = sum(r["failed"] for r in results)
    if failed:
        reasons = sorted({reason for r in results for reason in r["reasons"]})
        raise SystemExit(f"fleet {name}: {failed} of {agents} clients failed: {reasons}")
    return Phase(max(r["done_at"] for r in results) - started, cpu, served,
                 sum(r["cpu_s"] for r in results))


def _read_line(worker: subprocess.Popen[str], name: str) -> dict[str, Any]:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if not line:
        raise SystemExit(f"fleet {name}: a worker exited ({worker.wait()})")
    result: dict[str, Any] = json.loads(line)
    return result


# The figures -------------------------------------------------------------------------------


def mirror_phase(work: Path, server: ServerProcess, agents: int,
                 spec: dict[str, Any]) -> tuple[Phase | None, str | None]:
    """The fleet updating from nginx serving `edgeops release mirror` output (the server
    stays up as the agents' last source); (None, why) without nginx."""
    from tests.agent.ota.mirrors_support import (
        NGINX_MISSING,
        nginx_available,
        start_nginx,
        stop_nginx,
    )
    from tests.cli_support import run_edgeops

    if not nginx_available():
        return None, NGINX_MISSING
    www = work / "www"
    done = run_edgeops("release", "mirror", "--home", str(work / "server"), "--to", str(www / "m"))
    if done.returncode != 0:
        raise SystemExit(f"edgeops release mirror failed: {done.stderr}")
    # Room for every client's connections at once (its refresh and its download), twice over.
    nginx = start_nginx(www, work / "nginx", connections=4 * agents + 64)
    try:
        phase = run_phase("mirror", work, server, agents, {**spec, "mirrors": [nginx.mirror_url("m")]})
        fetched = [line for line in nginx.requests() if line.startswith("GET /m/targets/")]
    finally:
        stop_nginx(nginx.process)
    if len(fetched) < agents:
        raise SystemExit(f"fleet mirror: nginx served {len(fetched)} artifacts to {agents} agents")
    return phase, None


def fleet_figures(agents: int = FLEET_AGENTS) -> dict[str, Any]:
    import shutil

    from server.app.home import init_home
    from server.config.settings import ServerSettings
    from server.registry.artifact_store import ArtifactStore
    from server.trust.repository import TufRepository
    from simulations.processes import stop_process

    work = Path(tempfile.mkdtemp(prefix="bench-ota-fleet-"))
    settings = ServerSettings(home=work / "server")
    init_home(settings)
    repository, store = TufRepository(settings.tuf_dir), ArtifactStore(settings.artifacts_dir)
    base = publish_padded(repository, store, work, 1, 0)
    release: PaddedRelease = publish_padded(repository, store, work, 2, ARTIFACT_BYTES)
    server = start_server(settings.home)
    try:
        spec = {
            "server_url": server.url, "mirrors": [], "target": release.target,
            "artifact_url": release.url(server.url),
            "root": str(settings.tuf_dir / "metadata" / "1.root.json"),
            "base_path": str(base.path), "base_info": base.info.to_custom(),
        }
        bare = run_phase("bare", work, server, agents, {**spec, "mode": "bare"})
        update = run_phase("server", work, server, agents, {**spec, "mode": "update"})
        mirror, why = mirror_phase(work, server, agents, {**spec, "mode": "update"})
    finally:
        stop_process(server.process, timeout_s=10)
    shutil.rmtree(work, ignore_errors=True)
    phases = {"bare": bare, "server": update, "mirror": mirror}
    for name, phase in phases.items():
        if phase is None:
            print(f"fleet of {agents}, {name:>6}: not measured: {why}")
            continue
        print(f"fleet of {agents}, {name:>6}: {phase.seconds:6.2f} s to the last done; the server "
              f"sent {phase.served_bytes / 1e6:7.1f} MB with {phase.server_cpu_s:5.2f} CPU s; "
              f"the clients used {phase.client_cpu_s:5.2f} CPU s")
    return {
        "fleet_update_s_server": round(update.seconds, 3),
        "fleet_update_s_mirror": None if mirror is None else round(mirror.seconds, 3),
        "server_cpu_s_per_gb": _rounded(update.cpu_s_per_gb),
        "fleet_bare_s": round(bare.seconds, 3),
        "fleet_agents": agents,
        "fleet": {
            "bare_server_cpu_s_per_gb": _rounded(bare.cpu_s_per_gb),
            "workers": FLEET_WORKERS,
            "artifact_bytes": release.size,
            "mirror_skipped": why,
            "phases": {name: _phase_json(phase) for name, phase in phases.items()},
        },
    }


def _phase_json(phase: Phase | None) -> dict[str, float] | None:
    if phase is None:
        return None
    return {"seconds": round(phase.seconds, 3), "served_mb": round(phase.served_bytes / 1e6, 3),
            "server_cpu_s": round(phase.server_cpu_s, 3),
            "client_cpu_s": round(phase.client_cpu_s, 3)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    sub.add_parser("serve").add_argument("home", type=Path)
    sub.add_parser("worker").add_argument("spec", type=Path)
    parser.add_argument("--agents", type=int, default=FLEET_AGENTS)
    args = parser.parse_args()
    if args.role == "serve":
        serve_main(args.home)
    elif args.role == "worker":
        worker_main(args.spec)
    else:
        print(json.dumps(fleet_figures(args.agents)))


if __name__ == "__main__":
    main()
