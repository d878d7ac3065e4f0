"""Console login: sessions, who the caller is on every page, and cross-site request checks.

    GET  /console/login     the login form (?error= shows why the last try failed)
    POST /console/login     API token -> a new server-side session (server.auth.sessions);
                            its secret goes in an HttpOnly, SameSite=Strict cookie, Secure
                            under HTTPS (or always, with `console_secure_cookie`)
    POST /console/logout    end the session, drop the cookie

The cookie never holds the API token, and the API does not accept it. Sessions expire when
idle (`console_session_idle_s`) or old (`console_session_max_s`), and when their token is
revoked.

Every POST/PUT/PATCH/DELETE under /console is refused (403) unless its Origin (or, without
one, its Referer) is this server's own origin (`same_origin`, on the whole console router),
and unless its form carries the session's CSRF token (`CSRF_FIELD`, checked by
`ConsoleUserDep`); `page`, `button_form` and `start_form` put it in every form
(server.console.forms.csrf_input).

`ConsoleUserDep` is the caller of a page (no live session: a 303 to the login page),
`ConsoleOperatorDep` an operator or above (403 otherwise), `ConsoleJsonUserDep` the caller
of a JSON endpoint the page script polls (401 instead of a redirect).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from server.api.audit import MUTATING_METHODS, note
from server.api.deps import Principal, SessionFactoryDep, authenticate, principal_for_hash
from server.auth.sessions import (
    SessionLimits,
    close_session,
    csrf_token,
    find_session,
    open_session,
)
from server.auth.tokens import has_role, hash_token
from server.config.settings import ServerSettings
from server.console.forms import CSRF_FIELD, FormDep, read_form
from server.console.render import e, html, page

__all__ = [
    "CONSOLE_COOKIE",
    "CSRF_FIELD",
    "ConsoleJsonUserDep",
    "ConsoleOperatorDep",
    "ConsoleUser",
    "ConsoleUserDep",
    "LOGIN_PATH",
    "router",
    "same_origin",
]

LOGIN_PATH = "/console/login"
CONSOLE_COOKIE = "edgeops_session"
COOKIE_PATH = "/console"

router = APIRouter()


@dataclass(frozen=True)
class ConsoleUser(Principal):
    """A principal logged in to the console, with its session's CSRF token."""

    csrf: str = ""


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def _own_origins(request: Request) -> set[str | None]:
    """The origins a browser shows for this server's own pages: the one the request was sent
    to, and the configured public URL (a proxy in front may change the scheme or host)."""
    settings: ServerSettings = request.app.state.settings
    return {_origin(str(request.base_url)), _origin(settings.resolved_public_url)}


def same_origin(request: Request) -> None:
    """403 for a state-changing request whose Origin (or Referer) is not this server."""
    if request.method not in MUTATING_METHODS:
        return
    presented = request.headers.get("origin") or request.headers.get("referer") or ""
    origin = _origin(presented)
    if origin is None or origin not in _own_origins(request):
        raise HTTPException(
            403, detail=f"cross-site request refused: origin {presented or '(none)'!r} is not "
            "this server's; submit the form from the console's own pages")


def _limits(settings: ServerSettings) -> SessionLimits:
    return SessionLimits(settings.console_session_idle_s, settings.console_session_max_s)


def _session_user(request: Request) -> ConsoleUser | None:
    """The caller behind the session cookie, or None (no cookie, expired, token revoked)."""
    secret = request.cookies.get(CONSOLE_COOKIE, "")
    if not secret:
        return None
    with request.app.state.session_factory.begin() as session:
        row = find_session(session, secret, datetime.now(UTC), _limits(request.app.state.settings))
        token_sha256 = row.token_sha256 if row is not None else None
    if token_sha256 is None:
        return None
    principal = principal_for_hash(request, token_sha256)
    if principal is None:  # its token was revoked (or the admin token rotated)
        with request.app.state.session_factory.begin() as session:
            close_session(session, secret)
        return None
    user = ConsoleUser(principal.name, principal.role, principal.kind, principal.owner,
                       csrf=csrf_token(secret))
    request.state.principal = user
    return user


def _check_csrf(form: dict[str, str], user: ConsoleUser) -> None:
    if not hmac.compare_digest(form.get(CSRF_FIELD, "").encode(), user.csrf.encode()):
        raise HTTPException(403, detail="the form's CSRF token is missing or is not this "
                                        "session's; reload the page and submit it again")


async def console_user(request: Request) -> ConsoleUser:
    """The logged-in caller (a redirect to the login page without a live session); on a
    state-changing request, only with the session's CSRF token in the form."""
    user = await run_in_threadpool(_session_user, request)
    if user is None:
        raise HTTPException(303, detail="log in first", headers={"Location": LOGIN_PATH})
    if request.method in MUTATING_METHODS:
        _check_csrf(await read_form(request), user)
    return user


def console_operator(user: Annotated[ConsoleUser, Depends(console_user)]) -> ConsoleUser:
    if not has_role(user.role, "operator"):
        raise HTTPException(403, detail=f"{user.name} is a {user.role}; operators only")
    return user


def console_json_user(request: Request) -> ConsoleUser:
    user = _session_user(request)
    if user is None:
        raise HTTPException(401, detail="log in first")
    return user


ConsoleUserDep = Annotated[ConsoleUser, Depends(console_user)]
ConsoleOperatorDep = Annotated[ConsoleUser, Depends(console_operator)]
ConsoleJsonUserDep = Annotated[ConsoleUser, Depends(console_json_user)]


@router.get("/login", response_class=HTMLResponse)
def login_page(error: str = "") -> HTMLResponse:
    message = f'<p class="error">{e(error)}</p>' if error else ""
    return html(page("Log in", f"""{message}
<form method="post" action="/console/login">
<label>API token <input type="password" name="token" id="token" size="50" autofocus></label>
<button type="submit" id="login">Log in</button></form>
<p>Use a token from <code>POST /api/tokens</code> or the admin token in
<code>&lt;home&gt;/admin.token</code>.</p>"""))


@router.post("/login")
def login(request: Request, form: FormDep, session_factory: SessionFactoryDep) -> Response:
    token = form.get("token", "").strip()
    principal = authenticate(request, token)
    if principal is None:
        note(request, "console login refused: unknown or revoked token", outcome="denied")
        return RedirectResponse(f"{LOGIN_PATH}?error=unknown+or+revoked+token", status_code=303)
    request.state.principal = principal
    settings: ServerSettings = request.app.state.settings
    with session_factory.begin() as session:
        close_session(session, request.cookies.get(CONSOLE_COOKIE, ""))  # no fixation
        secret = open_session(session, hash_token(token), datetime.now(UTC), _limits(settings))
    note(request, "console login")
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(
        CONSOLE_COOKIE, secret, max_age=int(settings.console_session_max_s), path=COOKIE_PATH,
        httponly=True, samesite="strict",
        secure=settings.console_secure_cookie or request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request, form: FormDep, session_factory: SessionFactoryDep) -> Response:
    """End the session (with its CSRF token); an expired one just loses its cookie."""
    user = _session_user(request)
    if user is not None:
        _check_csrf(form, user)
        with session_factory.begin() as session:
            close_session(session, request.cookies.get(CONSOLE_COOKIE, ""))
        note(request, "console logout")
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(CONSOLE_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response
