"""What people ask of the pipeline (API, CLI through the API, console): start a run, approve
one, read runs. Each opens its own transaction over the server's session factory."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError
from server.auth.tokens import require_person
from server.config.settings import ServerSettings
from server.governance import audit_chain
from server.pipeline import store
from server.registry.aliases import CHAMPION, get_alias

__all__ = ["approve_run", "get_run", "list_runs", "load_server_policy", "request_run"]


def load_server_policy(settings: ServerSettings) -> Any:
    """The server's release policy (ConfigError naming the file if it is missing or wrong)."""
    from server.pipeline.policy import load_policy

    path = settings.pipeline_policy_path
    if not path.exists():
        raise ConfigError(
            f"no release policy at {path}: copy examples/policies/default.toml there "
            "(or set pipeline_policy_file in server.toml)"
        )
    return load_policy(path)


def request_run(session_factory: sessionmaker, settings: ServerSettings, actor: str,
                model: str | None = None, now: float | None = None) -> dict[str, Any]:
    """A person's run of the pipeline for the policy's model (`edgeops pipeline run`).

    ConfigError if the policy forbids manual runs or names another model; NotFoundError-free:
    a model without a champion still trains (from scratch unless warm start finds one)."""
    policy = load_server_policy(settings)
    if model is not None and model != policy.model:
        raise ConfigError(f"the release policy governs model {policy.model!r}, not {model!r}")
    if not policy.triggers.manual:
        raise ConfigError("the release policy does not allow manual runs (triggers.manual)")
    now = time.time() if now is None else now
    with session_factory.begin() as session:
        run = store.create_run(
            session, policy.model, policy.to_json(), {"kind": "manual", "actor": actor}, actor,
            now, get_alias(session, policy.model, CHAMPION),
        )
        return store.run_json(run, store.steps(session, run.id))


def approve_run(session_factory: sessionmaker, run_id: int, actor: str, *, kind: str,
                role: str | None = None, now: float | None = None) -> dict[str, Any]:
    """A person's approval of a run awaiting one, recorded as the run's `approved_by` and as
    one audit entry ("pipeline.approve", target "pipeline run <id>") in the same transaction.

    `actor` names the person ("Ada Lovelace (token ada)"), `kind` is their token's kind:
    PersonRequiredError for a service token, PipelineStateError for a run not awaiting
    approval, NotFoundError for an unknown run."""
    require_person(kind, actor, f"approve pipeline run {run_id}")
    now = time.time() if now is None else now
    with session_factory.begin() as session:
        already = store.get_run(session, run_id).approved_by
        run = store.approve(session, run_id, actor, now)
        if already is None:
            audit_chain.append(session, actor=actor, role=role, action="pipeline.approve",
                               resource="pipeline_run", target=f"pipeline run {run_id}",
                               detail=f"approved pipeline run {run_id} of {run.model}")
        return store.run_json(run, store.steps(session, run.id))


def get_run(session_factory: sessionmaker, run_id: int) -> dict[str, Any]:
    with session_factory() as session:
        run = store.get_run(session, run_id)
        return store.run_json(run, store.steps(session, run_id))


def list_runs(session_factory: sessionmaker, model: str | None = None,
              status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    with session_factory() as session:
        return [store.run_json(r) for r in store.list_runs(session, model, status, limit)]
