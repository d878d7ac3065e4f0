"""`pip install 'edgeops[agent]'` pulls only what the agent needs: none of the server
extra's packages, and nothing that exists only for rich terminal output (typer's full
distribution brings rich and pygments; the core depends on typer-slim)."""

from __future__ import annotations

import re
import tomllib
from functools import cache

from tests.cli_support import REPO_ROOT

# Rich terminal output, and what the server's stack brings with it, by distribution name.
TERMINAL_AND_WEB = {
    "typer", "rich", "pygments", "markdown-it-py", "shellingham", "jinja2", "starlette",
    "matplotlib", "pandas",
}  # fmt: skip


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-")


@cache
def _project() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def agent_install_requirements() -> set[str]:
    """Distribution names the core and the agent extra require."""
    project = _project()
    extras = project["optional-dependencies"]  # type: ignore[index]
    return {_name(r) for r in [*project["dependencies"], *extras["agent"]]}  # type: ignore[index]


@cache
def server_only_packages() -> frozenset[str]:
    """What the server extra adds over the agent's install, plus TERMINAL_AND_WEB."""
    extras = _project()["optional-dependencies"]  # type: ignore[index]
    server = {_name(r) for r in extras["server"] if not r.startswith("edgeops")}  # type: ignore[index]
    return frozenset((server - agent_install_requirements()) | TERMINAL_AND_WEB)


def test_the_agent_install_requires_no_server_only_package() -> None:
    assert agent_install_requirements() & server_only_packages() == set()


def test_the_server_only_list_names_the_heavy_ones() -> None:
    assert {
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "flwr",
        "torch",
        "httpx",
    } <= server_only_packages()


def test_the_cli_comes_from_typer_slim() -> None:
    assert "typer-slim" in agent_install_requirements()
