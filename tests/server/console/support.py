"""Drive the console as a browser does: log in with a token (the server hands back a session
cookie), send the console's own Origin, and post forms with the session's CSRF token."""

from __future__ import annotations

import re

import httpx

from server.console.forms import CSRF_FIELD

__all__ = ["console_login", "console_post", "csrf_of"]

_CSRF_INPUT = re.compile(rf'name="{CSRF_FIELD}" value="([0-9a-f]{{64}})"')


def console_login(client: httpx.Client, secret: str) -> httpx.Client:
    """Log `client` in with the API token `secret`; every later request carries the
    console's Origin, as a browser's would. Returns `client`."""
    client.headers["origin"] = str(client.base_url).rstrip("/")
    login = client.post("/console/login", data={"token": secret}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/console/", login.text
    return client


def csrf_of(client: httpx.Client) -> str:
    """The session's CSRF token, read from a page's forms (every page has the logout form)."""
    page = client.get("/console/", follow_redirects=False)
    match = _CSRF_INPUT.search(page.text)
    assert match is not None, f"no CSRF field on /console/ ({page.status_code}): {page.text[:300]}"
    return match[1]


def console_post(client: httpx.Client, path: str, **fields: str) -> httpx.Response:
    """Submit a console form at `path` with `fields` and the session's CSRF token."""
    return client.post(path, data={CSRF_FIELD: csrf_of(client), **fields}, follow_redirects=False)
