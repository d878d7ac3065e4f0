"""The operator-facing routers, in one list for build_app: rollouts, device labels and
history, tokens, audit log, training runs, and the web console."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.routes import audit as api_audit
from server.api.routes import devices as api_devices
from server.api.routes import rollouts as api_rollouts
from server.api.routes import tokens as api_tokens
from server.api.routes import training_runs as api_training
from server.console import console_router

__all__ = ["operator_routers"]


def operator_routers() -> list[APIRouter]:
    return [
        api_rollouts.router,
        api_devices.router,
        api_tokens.router,
        api_audit.router,
        api_training.router,
        console_router(),
    ]
