"""The HTTP client the operator CLI commands share: where the server is, the token, and
HTTP errors turned into domain errors (so `edgeops` exits with a meaningful code).

Connection: `--home DIR` (the server's own URL and admin token), or `--server URL` and
`--token T` (default from EDGEOPS_SERVER_URL and EDGEOPS_TOKEN).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from edgeops.cli import JsonOption
from edgeops.errors import ConfigError, EdgeOpsError, NotFoundError, TransportError
from server.rollouts.errors import RolloutError

__all__ = ["ApiClient", "HomeOption", "JsonOption", "ServerOption", "TokenOption", "connect"]

DEFAULT_SERVER = "http://127.0.0.1:8080"

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="A server home on this machine: use its URL and admin token."),
]
ServerOption = Annotated[
    str | None,
    typer.Option("--server", envvar="EDGEOPS_SERVER_URL",
                 help=f"Server URL (default {DEFAULT_SERVER}).", show_default=False),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="EDGEOPS_TOKEN",
                 help="API token (POST /api/tokens; operators can change rollouts).",
                 show_default=False),
]


class ApiClient:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {token}"})

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise TransportError(f"cannot reach the server at {self.base_url}: {err}") from err
        if response.status_code < 400:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        message = f"{method} {path}: {response.status_code} {detail}"
        if response.status_code in (401, 403):
            raise ConfigError(f"token refused ({message})")
        if response.status_code == 404:
            raise NotFoundError(message)
        if response.status_code == 409:
            raise RolloutError(message)
        if response.status_code < 500:
            raise ConfigError(message)
        if response.status_code == 503:
            raise TransportError(message)
        raise EdgeOpsError(message)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self._http.close()


def connect(home: Path | None, server: str | None, token: str | None) -> ApiClient:
    """A client for `--home`, or `--server`/`--token`; ConfigError says what is missing."""
    if home is not None:
        from server.app.home import read_admin_token
        from server.config.settings import load_settings

        settings = load_settings(home)
        return ApiClient(server or settings.resolved_public_url, token or read_admin_token(settings))
    token = token or os.environ.get("EDGEOPS_TOKEN")
    if not token:
        raise ConfigError("no API token: pass --token, set EDGEOPS_TOKEN, or --home of the server")
    return ApiClient(server or DEFAULT_SERVER, token)
