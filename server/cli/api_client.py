"""The HTTP client the operator CLI commands share: where the server is, the token, and
HTTP errors turned into domain errors (so `edgeops` exits with a meaningful code).

Connection: `--home DIR` (the server's own URL, admin token and fleet CA), or `--server URL`
and `--token-file PATH` (`-` reads standard input; defaults from EDGEOPS_SERVER_URL and
EDGEOPS_TOKEN). The token is never an argument: the command line shows in `ps` and shell
history. An HTTPS server with a certificate from the fleet CA is verified against the home's
`ca/ca.crt`, or against the file EDGEOPS_CA_FILE names.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from edgeops.cli import JsonOption
from edgeops.cli_secrets import read_secret
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
    Path | None,
    typer.Option("--token-file", envvar="EDGEOPS_TOKEN_FILE",
                 help="File holding the API token ('-': read it from standard input); or set "
                 "EDGEOPS_TOKEN. Tokens come from POST /api/tokens; operators can change "
                 "rollouts.", show_default=False),
]


class ApiClient:
    def __init__(
        self, base_url: str, token: str, *, timeout_s: float = 30.0, ca_file: Path | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(f"cannot load the CA certificate {ca_file}: {err}") from err
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, verify=verify,
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


def connect(home: Path | None, server: str | None, token_file: Path | None) -> ApiClient:
    """A client for `--home`, or `--server`/`--token-file`; ConfigError says what is missing."""
    token = read_secret(token_file, what="API token", env_var="EDGEOPS_TOKEN")
    env_ca = os.environ.get("EDGEOPS_CA_FILE")
    if home is not None:
        from server.app.home import read_admin_token
        from server.config.settings import load_settings
        from server.identity.ca import CA_DIR

        settings = load_settings(home)
        home_ca = settings.home / CA_DIR / "ca.crt"
        return ApiClient(server or settings.resolved_public_url, token or read_admin_token(settings),
                         ca_file=Path(env_ca) if env_ca else home_ca if home_ca.is_file() else None)
    if not token:
        raise ConfigError("no API token: pass --token-file PATH (or - for standard input), set "
                          "EDGEOPS_TOKEN, or --home of the server")
    return ApiClient(server or DEFAULT_SERVER, token, ca_file=Path(env_ca) if env_ca else None)
