"""The I/O shell of the continuous-delivery loop: triggers, then one step per run per tick.

    runner = PipelineRunner(settings, session_factory)
    runner.tick()          # look for triggers, advance every run in flight
    pipeline_lifespan(runner, interval_s)   # build_app's hook (a thread, like the monitor)

What each state waits for, and what moving on does (the state is committed *before* its
side effect, so a restart knows what to check):

    triggered          choose the participants, write their manifest -> training
    training           a training job (subprocess) until it recorded a training run for
                       this pipeline run (adopted after a restart; else a new attempt)
    evaluating         held-out accuracy of candidate and champion, the fleet evaluation,
                       the evaluation gates -> gated | refused
    gated              -> packaging
    packaging          package (int8 + fidelity + latency gates), publish (signed) ->
                       signed | refused; a release already published from this training
                       run is adopted, never published twice
    signed             challenger alias -> awaiting_approval
    awaiting_approval  automatic, or a person's approval; timeout -> refused
    canary             a gated rollout: each step judged against the control cohort, the
                       next wave released on a pass; fail (x failure_limit), health abort or
                       too long inconclusive -> rolled_back; last wave done -> promoted

One runner at a time: the same lease as the monitor, under its own name.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgeops.errors import ConfigError, EdgeOpsError, QuantizationGateError
from edgeops.exit_codes import ExitCode
from edgeops.federated.config import Participant
from server.background.periodic import LifespanHook, periodic
from server.config.settings import ServerSettings
from server.db.tables import (
    Device,
    DeviceLabel,
    Model,
    ModelVersion,
    MonitorEventRecord,
    MonitorWindowScore,
    PipelineRun,
    Release,
    Rollout,
    TrainingRun,
)
from server.monitoring import store as monitor_store
from server.monitoring.runner import FLEET_GROUP
from server.pipeline import store
from server.pipeline.canary import CohortQuality, aggregate_windows, judge_canary
from server.pipeline.evaluation import fleet_metrics, heldout
from server.pipeline.gates import CandidateMetrics, check_gates
from server.pipeline.machine import ACTIVE_STATUSES
from server.pipeline.policy import ReleasePolicy, load_policy
from server.pipeline.training import (
    TrainingJob,
    choose_participants,
    recorded_training_runs,
    run_dir,
    start_job,
)
from server.pipeline.training_job import PARTICIPANTS_FILE, champion_training_run
from server.registry.aliases import CHALLENGER, CHAMPION, delete_alias, get_alias, set_alias
from server.registry.artifact_store import ArtifactStore
from server.rollouts import store as rollout_store
from server.rollouts.controller import RolloutPolicy
from server.rollouts.errors import RolloutConflictError

__all__ = ["MAX_TRAINING_ATTEMPTS", "PipelineRunner", "PipelineStats", "pipeline_lifespan"]

logger = logging.getLogger(__name__)

LEASE_NAME = "pipeline"
_ADVISORY_KEY = 0x70697065  # "pipe"
LEASE_TTL_S = 30.0
ACTOR = "pipeline"
KILL_ENV = "EDGEOPS_FAULT_PIPELINE_KILL_AT"  # a state, or "packaging:published"
_KILL_TRAINING_AFTER_S = 3.0  # "training": once the job has been at it this long
MAX_TRAINING_ATTEMPTS = 3
STEPS_PER_TICK = 8  # fast states chain within one tick; a waiting state ends the chain


@dataclass
class PipelineStats:
    ticks: int = 0
    runs_started: int = 0
    runs_finished: dict[str, int] = field(default_factory=dict)
    last_tick_s: float = 0.0


class PipelineRunner:
    def __init__(
        self,
        settings: ServerSettings,
        session_factory: sessionmaker,
        *,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
    ) -> None:
        self._settings = settings
        self._session_factory = session_factory
        self._clock = clock
        self._holder = holder or settings.lease_holder
        self._jobs: dict[int, TrainingJob] = {}
        # Fault injection (tests, scenarios): SIGKILL this process at a pipeline point.
        self._kill_at = os.environ.get(KILL_ENV, "")
        self._lock = threading.Lock()
        self.stats = PipelineStats()

    # The tick ------------------------------------------------------------------------------

    def tick(self) -> None:
        with self._lock:
            started = time.perf_counter()
            now = self._clock()
            with self._session_factory.begin() as session:
                lease = monitor_store.acquire_lease(
                    session, self._holder, LEASE_TTL_S, now, name=LEASE_NAME,
                    advisory_key=_ADVISORY_KEY,
                )
                if lease is None:
                    return
                policy = self._server_policy()
                if policy is not None:
                    lease.watermark = self._triggers(session, policy, lease.watermark, now)
            run_ids = self._active_run_ids()
            for run_id in run_ids:
                for _ in range(STEPS_PER_TICK):
                    if not self._advance(run_id):
                        break
            self.stats.ticks += 1
            self.stats.last_tick_s = time.perf_counter() - started

    def close(self) -> None:
        """Stop training jobs of this process (the server is shutting down)."""
        for job in self._jobs.values():
            job.kill()
        self._jobs.clear()

    def _server_policy(self) -> ReleasePolicy | None:
        path = self._settings.pipeline_policy_path
        if not path.exists():
            return None
        try:
            return load_policy(path)
        except ConfigError as err:
            logger.error("pipeline: %s; no automatic runs until it is fixed", err)
            return None

    def _active_run_ids(self) -> list[int]:
        with self._session_factory() as session:
            return list(session.scalars(
                select(PipelineRun.id).where(PipelineRun.status.in_(sorted(ACTIVE_STATUSES)))
                .order_by(PipelineRun.id)))

    # Triggers ------------------------------------------------------------------------------

    def _triggers(self, session: Session, policy: ReleasePolicy, watermark: float | None,
                  now: float) -> float:
        """Start a run for the first new monitor event that the policy subscribes to, or for
        the schedule; returns the new watermark (the last event id looked at)."""
        last_seen = int(watermark) if watermark is not None else self._newest_event_id(session)
        events = list(session.scalars(
            select(MonitorEventRecord).where(MonitorEventRecord.id > last_seen)
            .order_by(MonitorEventRecord.id)))
        newest = events[-1].id if events else last_seen
        if store.active_run(session, policy.model) is not None:
            return float(newest)
        champion = self._champion(session, policy.model, now)
        last = session.scalar(select(PipelineRun).where(PipelineRun.model == policy.model)
                              .order_by(PipelineRun.id.desc()).limit(1))
        if last is not None and last.finished_at is not None and (
            now - last.finished_at < policy.triggers.cooldown_s
        ):
            return float(newest)
        champion_target = self._target(session, policy.model, champion)
        # A group's own event names the cohort to retrain for; the fleet-wide one does not.
        for event in sorted(events, key=lambda e: (_group_of(e.cohort) is None, e.id)):
            group = _group_of(event.cohort)
            if event.kind not in policy.triggers.events or event.release != champion_target:
                continue
            if policy.triggers.cohorts and group not in policy.triggers.cohorts:
                continue
            trigger = {"kind": "event", "event": event.kind, "event_id": event.id,
                       "cohort": event.cohort, "group": group, "release": event.release,
                       "evidence": event.evidence}
            self._start(session, policy, trigger, champion, now)
            return float(newest)
        if policy.triggers.schedule_s > 0:
            since = last.created_at if last is not None else None
            if since is None or now - since >= policy.triggers.schedule_s:
                self._start(session, policy, {"kind": "schedule"}, champion, now)
        return float(newest)

    @staticmethod
    def _newest_event_id(session: Session) -> int:
        """Where a fresh runner starts: events from before it existed do not start runs."""
        newest = session.scalar(select(MonitorEventRecord.id).order_by(
            MonitorEventRecord.id.desc()).limit(1))
        return int(newest or 0)

    def _start(self, session: Session, policy: ReleasePolicy, trigger: dict[str, Any],
               champion: int | None, now: float) -> None:
        run = store.create_run(session, policy.model, policy.to_json(), trigger, ACTOR, now,
                               champion)
        self.stats.runs_started += 1
        logger.info("pipeline run %d of %s started (%s)", run.id, policy.model, trigger["kind"])

    def _champion(self, session: Session, model: str, now: float) -> int | None:
        """The champion alias; a model without one adopts the release most devices run."""
        version = get_alias(session, model, CHAMPION)
        if version is not None:
            return version
        versions = [v for v in session.scalars(
            select(Device.version).where(Device.model == model)) if v is not None]
        if not versions:
            return None
        adopted = max(set(versions), key=versions.count)
        set_alias(session, model, CHAMPION, adopted, ACTOR)
        logger.info("model %s had no champion; adopted v%d, the version most devices run",
                    model, adopted)
        return adopted

    @staticmethod
    def _target(session: Session, model: str, version: int | None) -> str | None:
        if version is None:
            return None
        return session.scalar(
            select(Release.target_path).join(ModelVersion, ModelVersion.id == Release.model_version_id)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Model.name == model, ModelVersion.version == version))

    # One step of one run -------------------------------------------------------------------

    def _advance(self, run_id: int) -> bool:
        """One step of the run; True if it changed state (so the next step may follow)."""
        now = self._clock()
        try:
            with self._session_factory.begin() as session:
                run = store.get_run(session, run_id)
                if run.status not in ACTIVE_STATUSES:
                    return False
                before = run.status
                self._maybe_kill(run)
                policy = ReleasePolicy.from_json(run.policy)
                getattr(self, f"_in_{run.status}")(session, run, policy, now)
                changed = run.status != before
            if changed and run.status not in ACTIVE_STATUSES:
                self.stats.runs_finished[run.status] = self.stats.runs_finished.get(run.status, 0) + 1
            return changed
        except (store.PipelineConflictError, RolloutConflictError) as err:
            logger.info("pipeline run %d: %s; next tick", run_id, err)
            return False
        except EdgeOpsError as err:  # a step that cannot succeed: end the run, say why
            logger.exception("pipeline run %d failed", run_id)
            with self._session_factory.begin() as session:
                run = store.get_run(session, run_id)
                if run.status in ("canary",):
                    raise  # a canary ends by its rollout; never leave devices half-way
                self._refuse(session, run, f"{run.status} failed: {err}", self._clock())
            return True

    def _maybe_kill(self, run: PipelineRun, point: str | None = None) -> None:
        point = point or run.status
        if not self._kill_at or self._kill_at != point:
            return
        if point == "training":
            job = self._jobs.get(run.id)
            if job is None or time.monotonic() - job.started < _KILL_TRAINING_AFTER_S:
                return
        logger.warning("fault injection: SIGKILL at pipeline point %s (run %d)", point, run.id)
        os.kill(os.getpid(), signal.SIGKILL)

    def _refuse(self, session: Session, run: PipelineRun, reason: str, now: float,
                detail: dict[str, Any] | None = None) -> None:
        delete_alias(session, run.model, CHALLENGER)
        store.move(session, run, "refused", reason, now, detail, reason=reason)
        logger.warning("pipeline run %d refused: %s", run.id, reason)

    def _in_triggered(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                      now: float) -> None:
        from server.federated.participants import write_participants

        group = run.trigger.get("group") if run.trigger.get("kind") == "event" else None
        retraining = policy.retraining
        try:
            participants, fleet_size = choose_participants(
                session, self._settings, retraining.participants, group, retraining.min_devices)
            if not self._fresh_labels_ready(session, run, policy, participants, group, now):
                return
            write_participants(run_dir(self._settings, run.id) / PARTICIPANTS_FILE,
                               participants, num_partitions=fleet_size, feedback_until=now)
        except ConfigError as err:
            self._refuse(session, run, f"cannot train: {err}", now)
            return
        cohorts: dict[str, int] = {}
        for p in participants:
            cohorts[p.cohort] = cohorts.get(p.cohort, 0) + 1
        store.update_results(run, participants={"devices": len(participants), "cohorts": cohorts,
                                                "scope": retraining.participants})
        store.move(session, run, "training",
                   f"training on {len(participants)} devices ({', '.join(f'{c} {n}' for c, n in sorted(cohorts.items()))})"
                   f", {retraining.rounds} rounds{', SecAgg+' if retraining.secagg else ''}",
                   now, {"cohorts": cohorts}, training_attempts=1)

    def _fresh_labels_ready(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                            participants: list[Participant], group: str | None,
                            now: float) -> bool:
        """Whether the triggering cohort holds `min_fresh_labels` labels given since the
        trigger's window began (or the wait timed out); notes the count while it waits."""
        from server.federated.driver import feedback_rows

        wanted = policy.retraining.min_fresh_labels
        if wanted <= 0:
            return True
        windows = (run.trigger.get("evidence") or {}).get("windows") or []
        since = float(str(windows[0]).split("-")[0]) if windows else run.created_at
        cohort = [p for p in participants if group is None or p.cohort == group]
        fresh = sum(feedback_rows(Path(p.feedback_path), None, "train", since) for p in cohort)
        waited = now - run.created_at
        waiting = dict(run.results.get("fresh_labels") or {})
        if fresh >= wanted or waited >= policy.retraining.fresh_labels_timeout_s:
            store.update_results(run, fresh_labels={"count": fresh, "wanted": wanted,
                                                    "since": since, "waited_s": round(waited, 1)})
            if fresh < wanted:
                store.note(session, run, f"training on {fresh} fresh labels, fewer than "
                           f"{wanted}: waited {waited:.0f} s", now)
            return True
        if not waiting:
            store.update_results(run, fresh_labels={"count": fresh, "wanted": wanted,
                                                    "since": since})
            store.note(session, run, f"waiting for {wanted} fresh labels from "
                       f"{group or 'the fleet'} ({fresh} so far)", now)
        return False

    def _in_training(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                     now: float) -> None:
        recorded = recorded_training_runs(session, run.id)
        if recorded:
            self._jobs.pop(run.id, None)
            trained = recorded[0]
            store.update_results(run, training={
                "training_run_id": trained.id, "attempt": trained.config.get("attempt"),
                "rounds": len(trained.metrics.get("rounds", [])),
                "heldout_accuracy": trained.metrics.get("heldout_accuracy"),
                "secure_aggregation": bool(trained.config.get("secagg_resolved")),
                "wall_seconds": trained.metrics.get("wall_seconds"),
                "feedback_examples": trained.config.get("feedback_examples"),
            })
            store.move(session, run, "evaluating", f"training run {trained.id} recorded", now,
                       {"training_run_id": trained.id}, training_run_id=trained.id)
            return
        job = self._jobs.get(run.id)
        if job is None:  # nothing of ours is training it: a fresh run, or a restart
            if run.training_attempts > MAX_TRAINING_ATTEMPTS:
                self._refuse(session, run, f"training did not finish in {MAX_TRAINING_ATTEMPTS} attempts", now)
                return
            attempt = max(run.training_attempts, 1)
            if self._job_started(run.id, attempt):  # this attempt ran before (we restarted)
                attempt = run.training_attempts + 1
                run.training_attempts = attempt
                store.note(session, run, f"training attempt {attempt} (the previous one ended "
                           "with the server)", now)
                session.flush()
                return  # committed first; the job starts next step
            self._jobs[run.id] = start_job(self._settings, run.id, attempt)
            return
        code = job.poll()
        if code is None:
            return
        self._jobs.pop(run.id, None)
        if recorded_training_runs(session, run.id):
            return  # recorded just now: adopted on the next step
        tail = job.log_tail(4)
        if code == ExitCode.TRAINING or run.training_attempts >= MAX_TRAINING_ATTEMPTS:
            self._refuse(session, run, f"training failed (exit {code}): {tail}", now)
            return
        run.training_attempts += 1
        store.note(session, run, f"training attempt {job.attempt} failed (exit {code}); "
                   f"retrying", now, {"log": tail})

    def _job_started(self, run_id: int, attempt: int) -> bool:
        return (run_dir(self._settings, run_id) / f"training-{attempt}.log").exists()

    def _in_evaluating(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                       now: float) -> None:
        trained = session.get(TrainingRun, run.training_run_id)
        assert trained is not None and trained.weights_sha256 is not None
        artifacts = ArtifactStore(self._settings.artifacts_dir)
        candidate_heldout = heldout(trained.task, artifacts.path_for(trained.weights_sha256))
        champion_run = champion_training_run(session, run.model, run.champion_version)
        champion_heldout = (
            heldout(champion_run.task, artifacts.path_for(champion_run.weights_sha256))
            if champion_run is not None and champion_run.weights_sha256 else None
        )
        fleet = trained.metrics.get("fleet_evaluation")
        candidate = _metrics(candidate_heldout.accuracy, fleet_metrics(fleet, "candidate"))
        champion = (
            _metrics(champion_heldout.accuracy if champion_heldout else None,
                     fleet_metrics(fleet, "champion"))
            if run.champion_version is not None else None
        )
        verdict = check_gates(policy.gates, candidate, champion, stage="evaluation")
        store.update_results(run, evaluation={
            "heldout": {"candidate": candidate_heldout.to_json(),
                        "champion": champion_heldout.to_json() if champion_heldout else None},
            "fleet": fleet,
        }, gates=[r.to_json() for r in verdict.results])
        if not verdict.passed:
            self._refuse(session, run, f"refused at a gate: {verdict.reason}", now,
                         {"gates": [r.to_json() for r in verdict.results]})
            return
        store.move(session, run, "gated", f"passed {len(verdict.results)} evaluation gates "
                   f"(held-out {candidate_heldout.accuracy:.3f}"
                   + (f", fleet {candidate.fleet_accuracy:.3f}" if candidate.fleet_accuracy is not None else "")
                   + ")", now, {"gates": [r.to_json() for r in verdict.results]})

    def _in_gated(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                  now: float) -> None:
        store.move(session, run, "packaging", "packaging fp32 -> int8", now)

    def _in_packaging(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                      now: float) -> None:
        from server.pipeline.steps import load_training_run, package_run, publish_release

        published = self._published_release(session, run)
        if published is None:
            assert run.training_run_id is not None  # set on the way out of training
            trained = load_training_run(self._settings, self._session_factory, run.training_run_id)
            out = run_dir(self._settings, run.id) / "package"
            try:
                report = package_run(trained, out, _package_options(policy))
            except QuantizationGateError as err:
                self._refuse(session, run, f"refused at the int8 gate: {err}", now)
                return
            data = report.data
            candidate = CandidateMetrics(
                int8_drop_pp=(report.evaluation.fp32.accuracy - report.evaluation.int8.accuracy) * 100,
                int8_agreement=report.evaluation.agreement,
                p50_latency_us=report.evaluation.int8.p50_latency_us,
            )
            verdict = check_gates(policy.gates, candidate, None, stage="packaging")
            gates = [*run.results.get("gates", []), *(r.to_json() for r in verdict.results)]
            store.update_results(run, gates=gates, package={
                "accuracy": data.get("accuracy"), "agreement": data.get("agreement"),
                "sizes_bytes": data.get("sizes_bytes"), "p50_latency_us": data.get("p50_latency_us"),
            })
            if not verdict.passed:
                self._refuse(session, run, f"refused at a gate: {verdict.reason}", now,
                             {"gates": [r.to_json() for r in verdict.results]})
                return
            # No write in this session before publishing: it opens its own transactions,
            # and SQLite allows one writer (this session writes only once it moves on).
            release = publish_release(self._settings, self._session_factory, out, "int8",
                                      actor=ACTOR)
            published = (release.version, release.target_path)
            self._maybe_kill(run, "packaging:published")
        version, target = published
        store.move(session, run, "signed", f"published and signed v{version} ({target})", now,
                   {"version": version, "target": target}, candidate_version=version,
                   candidate_target=target)

    @staticmethod
    def _published_release(session: Session, run: PipelineRun) -> tuple[int, str] | None:
        """A release already published from this run's training run (after a restart)."""
        row = session.execute(
            select(ModelVersion.version, Release.target_path)
            .join(Release, Release.model_version_id == ModelVersion.id)
            .where(ModelVersion.training_run_id == run.training_run_id)
        ).first()
        return (int(row[0]), str(row[1])) if row is not None else None

    def _in_signed(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                   now: float) -> None:
        assert run.candidate_version is not None
        set_alias(session, run.model, CHALLENGER, run.candidate_version, ACTOR)
        mode = policy.approval.mode
        store.move(session, run, "awaiting_approval",
                   "approval: automatic (policy)" if mode == "automatic"
                   else f"waiting for an operator's approval (timeout {policy.approval.timeout_s:g} s)",
                   now)

    def _in_awaiting_approval(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                              now: float) -> None:
        if policy.approval.mode == "automatic":
            store.move(session, run, "canary", "approved automatically by the policy", now)
        elif run.approved_by is not None:
            store.move(session, run, "canary", f"approved by {run.approved_by}", now,
                       {"approved_by": run.approved_by})
        elif now - run.state_entered_at > policy.approval.timeout_s:
            self._refuse(session, run, f"nobody approved within {policy.approval.timeout_s:g} s", now)

    # The canary ----------------------------------------------------------------------------

    def _in_canary(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                   now: float) -> None:
        rollout = self._canary_rollout(session, run, policy, now)
        if rollout is None:
            return
        if rollout.status == "completed":
            assert run.candidate_version is not None
            set_alias(session, run.model, CHAMPION, run.candidate_version, ACTOR)
            delete_alias(session, run.model, CHALLENGER)
            store.move(session, run, "promoted",
                       f"promoted v{run.candidate_version} to champion (was v{run.champion_version})",
                       now, {"rollout_id": rollout.id})
            return
        if rollout.status == "aborted":
            delete_alias(session, run.model, CHALLENGER)
            reason = run.results.get("canary", {}).get("abort_reason") or (
                f"the rollout aborted: {rollout.reason}")
            store.move(session, run, "rolled_back", reason, now, {"rollout_id": rollout.id},
                       reason=reason)
            return
        if rollout.status != "running":
            return
        self._judge_step(session, run, policy, rollout, now)

    def _canary_rollout(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                        now: float) -> Rollout | None:
        if run.rollout_id is not None:
            return session.get(Rollout, run.rollout_id)
        existing = session.scalar(select(Rollout).where(Rollout.target == run.candidate_target)
                                  .order_by(Rollout.id).limit(1))
        if existing is None:
            canary = policy.canary
            spec = rollout_store.RolloutSpec(
                target=str(run.candidate_target),
                policy=RolloutPolicy(
                    waves_pct=tuple(canary.step_weights), soak_s=canary.interval_s,
                    failure_threshold_pct=canary.health_failure_threshold_pct,
                    device_timeout_s=max(120.0, canary.interval_s * 4),
                ),
                released_waves=1,
                order=tuple(_stratified(session)),
            )
            existing = rollout_store.create_rollout(session, spec, ACTOR, now)
        run.rollout_id = existing.id
        store.update_results(run, canary={"rollout_id": existing.id, "checks": [],
                                          "failed_checks": 0})
        store.note(session, run, f"canary rollout {existing.id}: steps "
                   f"{'/'.join(f'{w:g}%' for w in policy.canary.step_weights)}", now,
                   {"rollout_id": existing.id})
        session.flush()
        return None  # the rollout id is committed before anything else happens

    def _judge_step(self, session: Session, run: PipelineRun, policy: ReleasePolicy,
                    rollout: Rollout, now: float) -> None:
        released = rollout.released_waves or 1
        wave = rollout.current_wave
        holding = wave + 1 == released and rollout.soak_started_at is not None
        if not holding or now - float(rollout.soak_started_at or now) < policy.canary.interval_s:
            return
        canary_state = dict(run.results.get("canary", {}))
        checks = list(canary_state.get("checks", []))
        since = float(rollout.soak_started_at or now)
        if checks and checks[-1].get("wave") == wave + 1 and now - checks[-1]["at"] < policy.canary.interval_s:
            return
        champion_target = self._target(session, run.model, run.champion_version)
        judgment = judge_canary(
            self._cohorts(session, str(run.candidate_target), since),
            self._cohorts(session, champion_target, since) if champion_target else [],
            policy.canary,
        )
        check = {"at": now, "wave": wave + 1, **judgment.to_json()}
        checks.append(check)
        canary_state["checks"] = checks
        if judgment.verdict == "pass":
            rollout_store.release_waves(session, rollout.id, released + 1, now)
            canary_state["inconclusive_since"] = None
            message = f"canary step {wave + 1} passed: {judgment.reason}; releasing step {wave + 2}"
        elif judgment.verdict == "fail":
            canary_state["failed_checks"] = int(canary_state.get("failed_checks", 0)) + 1
            message = f"canary step {wave + 1} failed ({canary_state['failed_checks']} of " \
                      f"{policy.canary.failure_limit}): {judgment.reason}"
            if canary_state["failed_checks"] >= policy.canary.failure_limit:
                canary_state["abort_reason"] = f"rolled back: {judgment.reason}"
                rollout_store.request(session, rollout.id, "abort", ACTOR, now)
        else:
            since_inconclusive = canary_state.get("inconclusive_since") or now
            canary_state["inconclusive_since"] = since_inconclusive
            message = f"canary step {wave + 1} inconclusive, holding: {judgment.reason}"
            if now - since_inconclusive > policy.canary.inconclusive_timeout_s:
                canary_state["abort_reason"] = (
                    f"rolled back: inconclusive for {policy.canary.inconclusive_timeout_s:g} s "
                    f"({judgment.reason})")
                rollout_store.request(session, rollout.id, "abort", ACTOR, now)
        store.update_results(run, canary=canary_state)
        store.note(session, run, message, now, check)
        run.updated_at = now

    @staticmethod
    def _cohorts(session: Session, release: str, since: float) -> list[CohortQuality]:
        """The release's per-group quality over the windows that started after `since`."""
        rows = session.scalars(
            select(MonitorWindowScore).where(
                MonitorWindowScore.release == release,
                MonitorWindowScore.group_name.is_not(None),
                MonitorWindowScore.window_start >= since,
            )
        ).all()
        by_group: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_group.setdefault(str(row.group_name), []).append(monitor_store.window_summary(row))
        return [aggregate_windows(windows, group=group) for group, windows in by_group.items()]


def _group_of(cohort: str) -> str | None:
    """The device group of a monitor cohort `<release>@<group>`; None for the fleet."""
    group = cohort.rpartition("@")[2]
    return None if group == FLEET_GROUP else group


def _metrics(heldout_accuracy: float | None, fleet: dict[str, Any]) -> CandidateMetrics:
    return CandidateMetrics(
        heldout_accuracy=heldout_accuracy,
        fleet_accuracy=fleet.get("accuracy"),
        class_recall=fleet.get("class_recall") or None,
        cohort_accuracy=fleet.get("cohort_accuracy") or None,
        fleet_examples=fleet.get("examples"),
    )


def _package_options(policy: ReleasePolicy) -> Any:
    from server.pipeline.steps import PackageOptions

    budget = policy.gates.int8_drop_pp_max
    return PackageOptions(accuracy_budget_pp=budget if budget is not None else 100.0,
                          overwrite=True)


def _stratified(session: Session) -> list[str]:
    """Every device, round-robin over the groups in id order: each canary step then holds
    devices of every group, and every group keeps a control cohort until the last step."""
    groups: dict[str, list[str]] = {}
    labels = dict(session.execute(select(DeviceLabel.device_id, DeviceLabel.group_name)).all())
    for device_id in session.scalars(select(Device.device_id).order_by(Device.device_id)):
        groups.setdefault(labels.get(device_id) or "default", []).append(device_id)
    order: list[str] = []
    queues = [list(v) for _, v in sorted(groups.items())]
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order


def pipeline_lifespan(runner: PipelineRunner, interval_s: float) -> LifespanHook:
    """Tick every `interval_s` in a thread; stop this process's training jobs at shutdown."""
    hook = periodic("pipeline-runner", runner.tick, interval_s)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            async with hook(app):
                yield
        finally:
            runner.close()

    return lifespan
