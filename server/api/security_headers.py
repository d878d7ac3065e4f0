"""Browser hardening headers on every response of the server (API, console, TUF).

    Content-Security-Policy   scripts and styles from this server only, no framing, forms
                              post only here, no plug-ins, no <base> rewriting
    X-Frame-Options DENY      the same "no framing" for browsers without frame-ancestors
    X-Content-Type-Options    nosniff: a served artifact is never run as a script or page
    Referrer-Policy           same-origin: console URLs never leak to other sites

The console has no inline script (server/console/console.js is its only one). Its styles
may be inline: progress bars carry their width in a `style` attribute and the model card
its own `<style>`; every value in them is escaped by server.console.render.

Pure ASGI, like the audit middleware: it only adds headers to `http.response.start`, and
leaves a header a route set itself alone. `exempt_paths` get no CSP (FastAPI's /docs
loads Swagger UI from a CDN; it is served only when the `api_docs` setting asks for it).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "SecurityHeadersMiddleware"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
)
_ENCODED = tuple((name.encode(), value.encode()) for name, value in SECURITY_HEADERS)
_CSP = b"content-security-policy"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, exempt_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exempt = scope["path"] in self.exempt_paths

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [
                    (name, value)
                    for name, value in _ENCODED
                    if name not in present and not (exempt and name == _CSP)
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
