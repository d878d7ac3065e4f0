"""Console login: the token cookie, and who the caller is on every page.

    GET  /console/login     the login form (?error= shows why the last try failed)
    POST /console/login     token -> HttpOnly, SameSite=Strict cookie, then the overview
    POST /console/logout    drop the cookie

`ConsoleUserDep` is the caller of a page (no valid cookie: a 303 to the login page),
`ConsoleOperatorDep` an operator or above (403 otherwise), `ConsoleJsonUserDep` the caller
of a JSON endpoint the page script polls (401 instead of a redirect).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from server.api.audit import note
from server.api.deps import CONSOLE_COOKIE, Principal, authenticate
from server.auth.tokens import has_role
from server.console.forms import FormDep
from server.console.render import e, html, page

__all__ = [
    "ConsoleJsonUserDep",
    "ConsoleOperatorDep",
    "ConsoleUserDep",
    "LOGIN_PATH",
    "router",
]

LOGIN_PATH = "/console/login"
COOKIE_MAX_AGE_S = 12 * 3600

router = APIRouter()


def _cookie_user(request: Request) -> Principal | None:
    principal = authenticate(request, request.cookies.get(CONSOLE_COOKIE, ""))
    if principal is not None:
        request.state.principal = principal
    return principal


def console_user(request: Request) -> Principal:
    """The logged-in caller; without a valid cookie, a redirect to the login page."""
    principal = _cookie_user(request)
    if principal is None:
        raise HTTPException(303, detail="log in first", headers={"Location": LOGIN_PATH})
    return principal


def console_operator(user: Annotated[Principal, Depends(console_user)]) -> Principal:
    if not has_role(user.role, "operator"):
        raise HTTPException(403, detail=f"{user.name} is a {user.role}; operators only")
    return user


def console_json_user(request: Request) -> Principal:
    principal = _cookie_user(request)
    if principal is None:
        raise HTTPException(401, detail="log in first")
    return principal


ConsoleUserDep = Annotated[Principal, Depends(console_user)]
ConsoleOperatorDep = Annotated[Principal, Depends(console_operator)]
ConsoleJsonUserDep = Annotated[Principal, Depends(console_json_user)]


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
def login(request: Request, form: FormDep) -> Response:
    token = form.get("token", "").strip()
    principal = authenticate(request, token)
    if principal is None:
        return RedirectResponse(f"{LOGIN_PATH}?error=unknown+or+revoked+token", status_code=303)
    request.state.principal = principal
    note(request, "console login")
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(CONSOLE_COOKIE, token, httponly=True, samesite="strict",
                        max_age=COOKIE_MAX_AGE_S)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(CONSOLE_COOKIE)
    return response
