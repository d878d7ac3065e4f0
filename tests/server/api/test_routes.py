"""The HTTP surface's shape: module-level routers, one auth idiom, one error table, and the
rollout policy defaults taken from RolloutPolicy alone (pure: no app is served)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

import server.api
import server.console
from server.api import routes
from server.api.routes import ROUTERS
from server.api.routes.rollouts import RolloutCreate
from server.cli import rollout as rollout_cli
from server.console import auth, devices, overview, static
from server.console import rollouts as console_rollouts
from server.console.render import start_form
from server.rollouts.controller import RolloutPolicy

pytestmark = [pytest.mark.rollouts]

# Routes anyone may call: TUF (signatures protect it), enrollment (the one-time token is the
# credential), the CA certificate, and the Prometheus scrape.
PUBLIC = {
    ("POST", "/api/enroll"),
    ("POST", "/api/enroll/renew"),  # the device key's signature is the credential
    ("GET", "/api/enroll/ca"),
    ("GET", "/metrics"),
}
CONSOLE_PUBLIC = {
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("POST", "/console/logout"),
    ("GET", "/console/static/{name}"),
}

CONSOLE_PARTS = [p.router for p in (static, auth, overview, console_rollouts, devices)]


def _calls(dependant: Dependant) -> Iterator[str]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield getattr(sub.call, "__name__", "")
        yield from _calls(sub)


def _routes(routers: list[APIRouter], prefix: str = "") -> Iterator[tuple[str, str, APIRoute]]:
    for router in routers:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            for method in sorted(route.methods or ()):
                yield method, prefix + route.path, route


def test_every_routes_module_holds_one_module_level_router() -> None:
    modules = [importlib.import_module(f"{routes.__name__}.{m.name}")
               for m in pkgutil.iter_modules(routes.__path__)]

    assert {id(r) for r in ROUTERS} <= {id(m.router) for m in modules}
    for module in modules:
        assert isinstance(module.router, APIRouter), module.__name__
        factories = [n for n, f in inspect.getmembers(module, inspect.isfunction)
                     if f.__module__ == module.__name__ and n.endswith("_router")]
        assert factories == [], module.__name__


def test_every_api_route_but_the_public_ones_resolves_a_principal() -> None:
    unguarded = [
        (method, path) for method, path, route in _routes(ROUTERS)
        if not path.startswith("/tuf/") and (method, path) not in PUBLIC
        and not any(name.startswith("require_") for name in _calls(route.dependant))
    ]
    assert unguarded == []


def test_every_console_page_but_login_needs_the_cookie() -> None:
    unguarded = [
        (method, path) for method, path, route in _routes(CONSOLE_PARTS, "/console")
        if (method, path) not in CONSOLE_PUBLIC
        and not {"console_user", "console_json_user"} & set(_calls(route.dependant))
    ]
    assert unguarded == []


@pytest.mark.parametrize("package", [server.api, server.console])
def test_the_http_surface_never_imports_the_composition_root(package: object) -> None:
    root = Path(package.__file__).parent  # type: ignore[attr-defined]
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""] if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names] if isinstance(node, ast.Import) else []
            )
            offenders += [f"{path.name}: {n}" for n in names
                          if n == "server.app" or n.startswith("server.app.")]
    assert offenders == []


def test_api_cli_and_console_take_the_rollout_defaults_from_the_policy() -> None:
    defaults = RolloutPolicy()
    cli = inspect.signature(rollout_cli.start).parameters

    assert RolloutCreate(target="digits/1/model.onnx").policy() == defaults
    assert RolloutPolicy(
        waves_pct=tuple(float(p) for p in cli["waves"].default.split(",")),
        soak_s=cli["soak_s"].default,
        success_pct=cli["success_pct"].default,
        failure_threshold_pct=cli["failure_threshold"].default,
        failure_min_count=cli["failure_min"].default,
        device_timeout_s=cli["device_timeout_s"].default,
    ) == defaults
    form = start_form([], [], csrf="0" * 64)
    assert 'value="1,10,50,100"' in form and 'value="60"' in form and 'value="10"' in form
