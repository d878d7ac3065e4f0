"""The scenario engine: a scenario file's fleet living through its timeline, on real parts.

    broker (Mosquitto) ─ server (`edgeops server run`: monitor + pipeline runner inside)
    ─ agents in several processes (simulations/agent_host.py), traffic with feedback
    champion trained federatedly (Simulation Engine, SecAgg+), published, rolled out in waves
    ─► t = 0: the scenario's events at their times (drift, faults, a person's actions)
    ─► the server notices, retrains, gates, canaries, promotes or rolls back on its own
    ─► the end: accuracy per cohort, telemetry sent vs stored, assertions, the report

The engine decides nothing the product decides: it applies the scenario's world (inputs,
labels, faults) and reads what the server did. Time is real time; the monitor's short windows
compress it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from edgeops.errors import ConfigError, TransportError
from server.app.home import init_home
from server.config.settings import ServerSettings, load_settings
from server.db.engine import close_database, open_database
from server.pipeline import service
from server.pipeline.machine import FINAL_STATUSES
from server.pipeline.runner import KILL_ENV
from server.pipeline.steps import package_run, publish_release, start_rollout
from server.rollouts import RolloutPolicy, RolloutSpec
from simulations.laptop import (
    FleetAPI,
    SimulationConfig,
    train_federated,
    wait_until,
    watch_rollout,
)
from simulations.links import LinkRelay
from simulations.mosquitto import MosquittoBroker, find_mosquitto, free_port, wait_for_port
from simulations.processes import peak_rss_mb, stop_process
from simulations.scenario import Scenario

__all__ = ["ScenarioRun", "run_scenario"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
SAMPLE_S = 1.0
PIPELINE_GRACE_S = 240.0  # how long past the scenario's end a pipeline run may take to end
DRAIN_S = 30.0  # after the traffic stops, how long outboxes get to empty
SETTLE_WINDOWS = 4  # monitor windows a scenario goes on after its pipeline run ended


@dataclass
class ScenarioRun:
    """What happened: the timeline the report draws, and the summary and assertions."""

    timeline: dict[str, Any]
    out_dir: Path

    @property
    def passed(self) -> bool:
        return all(a["passed"] for a in self.timeline["assertions"])


class _Server:
    """`edgeops server run` as a supervised subprocess, killed and restarted by faults."""

    def __init__(self, settings: ServerSettings, log_path: Path) -> None:
        self.settings, self._log_path = settings, log_path
        self.process: subprocess.Popen | None = None
        self.kill_points: list[str] = []
        self.restarts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
        if self.kill_points:
            env[KILL_ENV] = self.kill_points.pop(0)
        with open(self._log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgeops.cli", "server", "run", "--home",
                 str(self.settings.home)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        try:
            wait_for_port(self.settings.http_host, self.settings.http_port, timeout_s=60)
        except TransportError as err:
            raise TransportError(f"the server did not start; see {self._log_path}") from err

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=15)


class _Host:
    """One agent-host process and the devices it runs."""

    def __init__(self, index: int, spec_path: Path, devices: list[str], log_path: Path) -> None:
        self.index, self.spec_path, self.devices, self._log_path = index, spec_path, devices, log_path
        self.process: subprocess.Popen | None = None
        self.restart_at: float | None = None

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process; `wait_ready` waits for its agents (hosts start side by side)."""
        log_file = open(self._log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulations.agent_host", str(self.spec_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True,
            start_new_session=True,
        )
        log_file.close()

    def wait_ready(self) -> None:
        ready = self._read()
        if not ready.get("ok"):
            raise TransportError(f"agent host {self.index} did not start; see {self._log_path}")

    def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise TransportError(f"agent host {self.index} exited; see {self._log_path}")
        return dict(json.loads(line))

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        if not self.alive:
            return {"ok": False, "error": "down"}
        stdin: IO[str] | None = self.process.stdin if self.process else None
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        return self._read()

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.alive:
            try:
                self.ask({"cmd": "stop"})
            except (TransportError, OSError, ValueError):
                pass
            assert self.process is not None
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class _World:
    """The scenario's state of the world, re-applied to a host that restarts."""

    drift: dict[str, tuple[str, float]] = field(default_factory=dict)
    label_faults: set[str] = field(default_factory=set)
    links: dict[str, LinkRelay] = field(default_factory=dict)  # cohort -> its relay to the broker

    def commands(self) -> list[dict[str, Any]]:
        return [
            *({"cmd": "drift", "group": g, "kind": k, "amount": a} for g, (k, a) in self.drift.items()),
            *({"cmd": "label_fault", "group": g, "on": True} for g in self.label_faults),
        ]


def run_scenario(scenario: Scenario, out_dir: Path, progress: Progress = lambda _m: None,
                 *, keep_console: bool = False) -> ScenarioRun:
    find_mosquitto()
    out = out_dir.resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir()
    _logs_to_files(out / "logs")
    wall0 = time.monotonic()

    def say(message: str) -> None:
        progress(f"[{time.monotonic() - wall0:6.1f}s] {message}")

    with ExitStack() as stack:
        broker = stack.enter_context(MosquittoBroker(workdir=out / "broker"))
        settings = ServerSettings(
            home=out / "server", http_port=free_port(), broker_host=broker.host,
            broker_port=broker.port, monitor_window_s=scenario.monitor.window_s,
            monitor_interval_s=0.5, monitor_grace_s=1.0, monitor_min_count=40,
            pipeline_interval_s=0.5, simulated_fleet_dir=str(out / "agents"),
            # one laptop, loopback only: plain HTTP and MQTT, opted into (docs/security.md)
            allow_insecure_http=True, allow_insecure_mqtt=True,
        )
        init_home(settings)
        settings = load_settings(settings.home)
        if scenario.policy is not None:
            settings.pipeline_policy_path.write_text(scenario.policy_toml())
        server = _Server(settings, out / "logs" / "server.log")
        server.kill_points = [e.at_pipeline_state for e in scenario.events
                              if e.kind == "kill_server" and e.at_pipeline_state]
        server.start()
        stack.callback(server.stop)
        token = settings.admin_token_file.read_text().strip()
        api = FleetAPI(settings.resolved_public_url, token)
        stack.callback(api.close)
        http = httpx.Client(base_url=settings.resolved_public_url, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        stack.callback(http.close)

        devices = scenario.fleet.devices
        trainers = min(scenario.champion.clients or devices, devices)
        say(f"training the champion federatedly on {trainers} devices' data "
            f"({scenario.champion.rounds} rounds{', SecAgg+' if trainers >= 3 else ''})")
        sim = SimulationConfig(devices=trainers, rounds=scenario.champion.rounds,
                               local_epochs=scenario.champion.local_epochs, seed=scenario.seed,
                               alpha=scenario.fleet.alpha or None)
        champion_run, _ = train_federated(sim, settings, lambda _m: None)
        package_run(champion_run, out / "champion")
        session_factory = open_database(settings.resolved_database_url)
        stack.callback(close_database, session_factory)
        champion = publish_release(settings, session_factory, out / "champion", "int8",
                                    actor="simulation")
        say(f"champion v{champion.version} signed and published")

        cohorts = list(scenario.fleet.assignment())
        ids = [f"device-{i:04d}" for i in range(devices)]
        world = _World(links=_link_relays(scenario, broker))
        for relay in world.links.values():
            stack.callback(relay.close)
        hosts = _start_hosts(scenario, settings, broker, out, ids, cohorts, world.links)
        for host in hosts:
            stack.callback(host.stop)
        say(f"{devices} agents in {len(hosts)} processes")
        wait_until("every agent to register",
                   lambda: {d["device_id"] for d in api.devices() if d["online"]} >= set(ids), 120)
        for device_id, cohort in zip(ids, cohorts, strict=True):
            http.put(f"/api/devices/{device_id}/labels",
                     json={"group": cohort, "tags": []}).raise_for_status()
        # Hundreds of devices updating at once share this laptop's two cores with the
        # server: a device's (and a quiet wave's) time allowance grows with the fleet.
        allowance_s = max(120.0, 0.3 * devices)
        rollout = start_rollout(session_factory, RolloutSpec(
            target=champion.target_path,
            policy=RolloutPolicy(waves_pct=tuple(scenario.champion.waves), soak_s=0.5,
                                 device_timeout_s=allowance_s,
                                 max_in_flight=scenario.champion.max_in_flight)), "scenario")
        watch_rollout(api, rollout.id, allowance_s, lambda line: say(line.strip()))
        say(f"every device runs v{champion.version}; the scenario's clock starts")

        recorder = _Recorder(scenario, settings, session_factory, api, hosts, cohorts, ids)
        recorder.accuracy("before")
        t0 = recorder.t0 = time.time()
        _play(scenario, t0, world, hosts, broker, server, http, recorder, say)
        recorder.accuracy("after")
        timeline = recorder.finish(t0, hosts, server, broker, champion.version,
                                   time.monotonic() - wall0)
        from simulations.timeline_report import write_timeline_report

        paths = write_timeline_report(timeline, out)  # type: ignore[arg-type]
        say(f"report: {paths.get('html')}")
        if keep_console:
            _offer_console(settings, http, say)
        return ScenarioRun(timeline=timeline, out_dir=out)
    raise AssertionError("unreachable")  # pragma: no cover


def _logs_to_files(folder: Path) -> None:
    """Flower's, Ray's and Python's warnings go to logs/flower.log, not onto the screen: the
    terminal shows the scenario's own progress lines only."""
    from server.federated.flower_logs import flower_logs_to

    flower_logs_to(folder / "flower.log")


def _link_relays(scenario: Scenario, broker: MosquittoBroker) -> dict[str, LinkRelay]:
    """A relay for each cohort a `lossy_link` event names; other cohorts reach the broker
    directly."""
    lossy = sorted({e.cohort for e in scenario.events if e.kind == "lossy_link"})
    return {cohort: LinkRelay(broker.host, broker.port, seed=scenario.seed + i)
            for i, cohort in enumerate(lossy)}


def _start_hosts(scenario: Scenario, settings: ServerSettings, broker: MosquittoBroker,
                 out: Path, ids: list[str], cohorts: list[str],
                 links: dict[str, LinkRelay]) -> list[_Host]:
    processes = min(scenario.fleet.agent_processes, len(ids))
    hosts = []
    trusted_root = settings.tuf_dir / "metadata" / "1.root.json"
    for index in range(processes):
        mine = [i for i in range(len(ids)) if i % processes == index]
        spec = {
            "server_url": settings.resolved_public_url, "broker_host": broker.host,
            "broker_port": broker.port, "trusted_root": str(trusted_root),
            "telemetry_interval_s": scenario.traffic.telemetry_interval_s, "rate_hz": scenario.traffic.rate_hz,
            "feedback_share": scenario.traffic.feedback_share,
            "feedback_delay_s": scenario.traffic.feedback_delay_s, "seed": scenario.seed + index,
            "devices": [{"device_id": ids[i], "home": str(out / "agents" / ids[i]),
                         "group": cohorts[i], "partition": i, "num_partitions": len(ids),
                         "broker_port": links[cohorts[i]].port if cohorts[i] in links
                         else broker.port}
                        for i in mine],
        }
        spec_path = out / "logs" / f"agent-host-{index}.json"
        spec_path.write_text(json.dumps(spec))
        host = _Host(index, spec_path, [ids[i] for i in mine],
                     out / "logs" / f"agent-host-{index}.log")
        host.launch()
        hosts.append(host)
    try:
        for host in hosts:
            host.wait_ready()
    except BaseException:
        for host in hosts:
            host.kill()
        raise
    return hosts


def _play(scenario: Scenario, t0: float, world: _World, hosts: list[_Host],
          broker: MosquittoBroker, server: _Server, http: httpx.Client, recorder: _Recorder,
          say: Progress) -> None:
    """The events at their times; then wait for the pipeline to end (if one started)."""
    pending = sorted((e for e in scenario.events if e.at_s is not None),
                     key=lambda e: float(e.at_s or 0.0))
    broker_up_at: float | None = None
    server_up_at: float | None = None
    offline_until: dict[int, float] = {}
    end = t0 + scenario.duration_s
    deadline = end + PIPELINE_GRACE_S
    while True:
        now = time.time()
        t = now - t0
        while pending and float(pending[0].at_s or 0.0) <= t:
            if pending[0].kind == "approve" and not _awaiting_approval(recorder):
                break  # a person approves once there is something to approve
            event = pending.pop(0)
            label = _apply(event, world, hosts, broker, server, http, recorder, t)
            say(f"t={t:5.1f}s  {label}")
            if event.kind == "broker_down":
                broker_up_at = now + event.duration_s
            if event.kind == "kill_server":
                server_up_at = now + event.restart_after_s
            if event.kind == "kill_agents":
                for host in hosts:
                    if not host.alive and host.restart_at is None:
                        host.restart_at = now + event.restart_after_s
            if event.kind == "offline":
                for host in _hosts_for(event, hosts, recorder):
                    offline_until[host.index] = now + event.duration_s
        if broker_up_at is not None and now >= broker_up_at:
            broker.start()
            broker_up_at = None
            recorder.mark(t, "fault", "broker back")
            say(f"t={t:5.1f}s  broker back")
        for host in hosts:
            if host.restart_at is not None and now >= host.restart_at:
                host.restart_at = None
                host.start()
                for command in world.commands():
                    host.ask(command)
                say(f"t={t:5.1f}s  agent host {host.index} restarted ({len(host.devices)} devices)")
            if host.index in offline_until and now >= offline_until[host.index]:
                del offline_until[host.index]
                if host.process is not None:
                    os.killpg(host.process.pid, signal.SIGCONT)
                say(f"t={t:5.1f}s  agent host {host.index} back online")
        if server.died() and (server_up_at is None or now >= server_up_at):
            server.restarts += 1
            server.start()
            server_up_at = None
            recorder.mark(t, "fault", "server restarted")
            say(f"t={t:5.1f}s  server restarted")
        recorder.sample(t, say)
        settled = (not pending and broker_up_at is None and not offline_until
                   and all(h.restart_at is None for h in hosts) and not server.died())
        if settled:
            run = recorder.pipeline_run()
            ended = run is not None and run["status"] in FINAL_STATUSES
            # A run that ended early ends the scenario a few windows later (the report shows
            # the recovery); without a run, the scenario lasts its duration.
            if ended and run is not None and now - run["finished_at"] >= SETTLE_WINDOWS * scenario.monitor.window_s:
                return
            if t >= scenario.duration_s and (run is None or ended or now > deadline):
                return
        time.sleep(SAMPLE_S)


def _awaiting_approval(recorder: _Recorder) -> bool:
    run = recorder.pipeline_run()
    return run is not None and run["status"] == "awaiting_approval"


def _hosts_for(event: Any, hosts: list[_Host], recorder: _Recorder) -> list[_Host]:
    """The host processes holding the devices an event names (a cohort, or a count)."""
    if getattr(event, "cohort", None):
        wanted = {d for d, c in zip(recorder.ids, recorder.cohorts, strict=True) if c == event.cohort}
        return [h for h in hosts if wanted & set(h.devices)]
    count = getattr(event, "count", None) or getattr(event, "devices", None) or 1
    chosen, covered = [], 0
    for host in hosts:
        if covered >= count:
            break
        chosen.append(host)
        covered += len(host.devices)
    return chosen


def _apply(event: Any, world: _World, hosts: list[_Host], broker: MosquittoBroker,
           server: _Server, http: httpx.Client, recorder: _Recorder, t: float) -> str:
    kind = event.kind
    if kind == "drift":
        world.drift[event.cohort] = (event.drift, event.amount)
        for host in hosts:
            host.ask({"cmd": "drift", "group": event.cohort, "kind": event.drift,
                      "amount": event.amount})
        recorder.drift_onset(t, event.cohort)
        label = f"drift {event.drift} {event.amount:g} on {event.cohort}"
        recorder.accuracy("during", event.cohort)
    elif kind == "label_fault":
        world.label_faults.add(event.cohort)
        for host in hosts:
            host.ask({"cmd": "label_fault", "group": event.cohort, "on": True})
        recorder.drift_onset(t, event.cohort)
        label = f"labels of {event.cohort} corrupted ({event.fault})"
    elif kind == "broker_down":
        broker.kill()
        label = f"broker down for {event.duration_s:g} s"
    elif kind == "kill_agents":
        victims = _hosts_for(event, hosts, recorder)
        for host in victims:
            host.kill()
        label = (f"SIGKILL {sum(len(h.devices) for h in victims)} agents "
                 f"({len(victims)} processes), back in {event.restart_after_s:g} s")
    elif kind == "kill_server":
        server.kill()
        label = f"SIGKILL the server, back in {event.restart_after_s:g} s"
    elif kind == "offline":
        victims = _hosts_for(event, hosts, recorder)
        for host in victims:
            if host.process is not None:
                os.killpg(host.process.pid, signal.SIGSTOP)
        label = f"{sum(len(h.devices) for h in victims)} devices offline for {event.duration_s:g} s"
    elif kind == "lossy_link":
        world.links[event.cohort].impair(event.loss_pct, event.duration_s)
        label = f"{event.cohort}'s link loses {event.loss_pct:g} % for {event.duration_s:g} s"
    elif kind == "pipeline_run":
        response = http.post("/api/pipeline/runs", json={})
        label = f"a person starts a pipeline run ({response.status_code})"
    elif kind == "approve":
        run = recorder.pipeline_run()
        code = http.post(f"/api/pipeline/runs/{run['id']}/approve").status_code if run else 404
        label = f"a person approves the pipeline run ({code})"
    else:
        raise AssertionError(f"no player for a {kind!r} event")  # the schema admits no other
    recorder.mark(t, "drift" if kind in ("drift", "label_fault") else
                  "event" if kind in ("pipeline_run", "approve") else "fault", label,
                  until=t + getattr(event, "duration_s", 0) if getattr(event, "duration_s", None) else None)
    return label


def _offer_console(settings: ServerSettings, http: httpx.Client, say: Progress) -> None:
    response = http.post("/api/tokens", json={"name": f"viewer-{int(time.time())}", "role": "viewer",
                                              "kind": "person", "owner": "the person at this laptop"})
    token = response.json().get("token") if response.status_code < 400 else "(see admin.token)"
    say(f"console: {settings.resolved_public_url}/console   viewer token: {token}")
    say("the server stays up until you press Ctrl-C")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


class _Recorder:
    """Samples the fleet while the scenario plays and builds the report's timeline."""

    def __init__(self, scenario: Scenario, settings: ServerSettings, session_factory: Any,
                 api: FleetAPI, hosts: list[_Host], cohorts: list[str], ids: list[str]) -> None:
        self.scenario, self.settings, self.session_factory = scenario, settings, session_factory
        self.api, self.hosts, self.cohorts, self.ids = api, hosts, cohorts, ids
        self.marks: list[dict[str, Any]] = []
        self.versions: list[dict[str, Any]] = []
        self.onsets: dict[str, float] = {}
        self.accuracies: dict[str, dict[str, float]] = {}
        self.device_accuracy: dict[str, dict[str, float]] = {}
        self._shown_run: tuple[int, int] = (0, 0)
        self._last_sample = 0.0
        self.t0 = 0.0

    def mark(self, t: float, kind: str, label: str, until: float | None = None) -> None:
        self.marks.append({"t": round(t, 2), "until": until, "kind": kind, "label": label})

    def drift_onset(self, t: float, cohort: str) -> None:
        self.onsets.setdefault(cohort, t)

    def accuracy(self, phase: str, only: str | None = None) -> None:
        """Held-out accuracy per cohort (and per device) as devices see their data now."""
        per_device: dict[str, list[int]] = {}
        for host in self.hosts:
            reply = host.ask({"cmd": "accuracy", "group": only, "drifted": True})
            per_device.update(reply.get("devices", {}))
        totals: dict[str, list[int]] = {}
        for device_id, (correct, total) in per_device.items():
            cohort = self.cohorts[self.ids.index(device_id)]
            pair = totals.setdefault(cohort, [0, 0])
            pair[0] += correct
            pair[1] += total
            if total:
                self.device_accuracy.setdefault(phase, {})[device_id] = round(correct / total, 4)
        self.accuracies.setdefault(phase, {}).update(
            {c: round(n / t, 4) for c, (n, t) in totals.items() if t})

    def pipeline_run(self) -> dict[str, Any] | None:
        runs = service.list_runs(self.session_factory, limit=1)
        return service.get_run(self.session_factory, runs[0]["id"]) if runs else None

    def sample(self, t: float, say: Progress) -> None:
        if t - self._last_sample < SAMPLE_S:
            return
        self._last_sample = t
        try:
            devices = self.api.devices()
        except (httpx.HTTPError, TransportError):
            return  # the server is down: a gap in the timeline
        counts: dict[str, int] = {}
        for d in devices:
            key = str(d.get("version")) if d.get("version") is not None else "none"
            counts[key] = counts.get(key, 0) + 1
        self.versions.append({"t": round(t, 2), "counts": counts})
        run = self.pipeline_run()
        if run is not None:
            shown_id, shown = self._shown_run
            entries = run["timeline"][shown if shown_id == run["id"] else 0:]
            for entry in entries:
                say(f"t={entry['at'] - self.t0 if self.t0 else t:5.1f}s  pipeline run {run['id']} "
                    f"{entry['status']}: {entry['message']}")
            self._shown_run = (run["id"], len(run["timeline"]))

    def finish(self, t0: float, hosts: list[_Host], server: _Server, broker: MosquittoBroker,
               champion_version: int, wall_s: float) -> dict[str, Any]:
        from simulations.assertions import evaluate_assertions
        from simulations.telemetry_accounting import telemetry_counts

        versions = {h: host.ask({"cmd": "stats"}) for h, host in enumerate(hosts)}
        memory = {
            "engine": peak_rss_mb(),
            "server": _peak_rss_mb(server.process), "broker": _peak_rss_mb(broker.process),
            "agent_hosts": round(sum(v.get("peak_rss_mb") or 0.0 for v in versions.values()), 1),
            "agent_threads": sum(v.get("threads", 0) for v in versions.values()),
        }
        devices = self.api.devices()  # while every agent still runs (stopped ones go offline)
        for host in hosts:
            host.ask({"cmd": "pause"})
        time.sleep(2.5)  # every agent's last window closes (1 s telemetry interval)
        telemetry = telemetry_counts(self.session_factory,
                                     [self.settings.home.parent / "agents" / i for i in self.ids],
                                     DRAIN_S)
        sent = sum(n for n, _ in telemetry.values())
        stored = sum(s for _, s in telemetry.values())
        for host in hosts:
            host.stop()
        run = self.pipeline_run()
        windows = _windows(self.session_factory, t0)
        timeline: dict[str, Any] = {
            "scenario": self.scenario.name, "started_at": t0, "ended_at": time.time(),
            "windows": windows, "versions": self.versions, "marks": self.marks,
            "pipeline": [{"t": round(e["at"] - t0, 2), "status": e["status"],
                          "message": e["message"]} for e in (run or {}).get("timeline", [])],
            "devices": [
                {"device_id": d["device_id"], "group": self.cohorts[self.ids.index(d["device_id"])],
                 "version": d.get("version"), "state": d.get("state"),
                 "telemetry_sent": telemetry.get(d["device_id"], (0, 0))[0],
                 "telemetry_stored": telemetry.get(d["device_id"], (0, 0))[1],
                 "accuracy_before": self.device_accuracy.get("before", {}).get(d["device_id"]),
                 "accuracy_after": self.device_accuracy.get("after", {}).get(d["device_id"])}
                for d in devices if d["device_id"] in self.ids
            ],
            "run": run,
            "accuracies": self.accuracies,
            "onsets": self.onsets,
            "server_restarts": server.restarts,
            "host_stats": versions,
            "memory": memory,
        }
        summary = _summary(self.scenario, timeline, sent, stored, champion_version, wall_s,
                           self.settings, self.session_factory)
        timeline["summary"] = summary
        timeline["assertions"] = evaluate_assertions(self.scenario, timeline, self.session_factory)
        return timeline


def _windows(session_factory: Any, t0: float) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from server.db.tables import MonitorWindowScore

    with session_factory() as session:
        rows = session.scalars(select(MonitorWindowScore).order_by(MonitorWindowScore.window_start))
        return [
            {"t": round(r.window_end - t0, 2), "cohort": r.group_name or "fleet",
             "release": r.release, "version": _version_of(r.release),
             "drift_score": r.max_psi, "verdict": r.verdict,
             "estimated_accuracy": r.estimated_accuracy, "realised_accuracy": r.realised_accuracy,
             "count": r.count}
            for r in rows
        ]


def _version_of(target: str) -> int | None:
    parts = target.split("/")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


def _summary(scenario: Scenario, timeline: dict[str, Any], sent: int, stored: int,
             champion_version: int, wall_s: float, settings: ServerSettings,
             session_factory: Any) -> dict[str, Any]:
    run = timeline["run"] or {}
    onsets = timeline["onsets"]
    drifted = next(iter(onsets), None)
    onset = onsets.get(drifted) if drifted else None
    t0 = timeline["started_at"]
    detection = None
    if run and onset is not None:
        detection = round(run["created_at"] - t0 - onset, 1)
    recovery = None
    if run.get("status") == "promoted" and onset is not None:
        recovery = round(run["finished_at"] - t0 - onset, 1)
    acc = timeline["accuracies"]
    published = max((d.get("version") or 0) for d in timeline["devices"]) if timeline["devices"] else None
    return {
        "scenario": scenario.name,
        "detection_delay_s": detection,
        "recovery_s": recovery,
        "drifted_cohort": drifted,
        "accuracy_before": acc.get("before", {}).get(drifted) if drifted else None,
        "accuracy_during": acc.get("during", {}).get(drifted) if drifted else None,
        "accuracy_after": acc.get("after", {}).get(drifted) if drifted else None,
        "control_accuracy_before": _mean_except(acc.get("before", {}), drifted),
        "control_accuracy_after": _mean_except(acc.get("after", {}), drifted),
        "ota_bytes": _ota_bytes(settings),
        "telemetry_sent": sent,
        "telemetry_stored": stored,
        "published_version": published,
        "champion_version": champion_version,
        "pipeline_status": run.get("status"),
        "devices": len(timeline["devices"]),
        "server_restarts": timeline["server_restarts"],
        "wall_s": round(wall_s, 1),
        # Peak RSS of each part (MB; agent_hosts is the sum over the agent processes).
        "peak_rss_mb": {k: v for k, v in timeline["memory"].items() if k != "agent_threads"},
        "agent_threads": timeline["memory"]["agent_threads"],
    }


def _peak_rss_mb(process: subprocess.Popen | None) -> float | None:
    return peak_rss_mb(process.pid) if process is not None and process.poll() is None else None


def _mean_except(values: dict[str, float], cohort: str | None) -> float | None:
    others = [v for c, v in values.items() if c != cohort]
    return round(sum(others) / len(others), 4) if others else None


def _ota_bytes(settings: ServerSettings) -> int:
    """Model bytes the devices took over the air: what their A/B slots hold (each slot was
    filled by one download; a partial download that was resumed counts once)."""
    agents = settings.home.parent / "agents"
    return sum(path.stat().st_size for path in agents.glob("*/slots/*/model.onnx"))
