"""The operator-facing routers, in one list for build_app: rollouts, device labels and
history, tokens, audit log, training runs, and the web console."""

from __future__ import annotations

from fastapi import APIRouter

from server import api_audit, api_devices, api_rollouts, api_tokens, api_training
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
