"""The web console: server-rendered pages with a little JavaScript, no external assets.

    console_router() -> APIRouter mounted at /console

Login with an API token (kept in an HttpOnly, SameSite=Strict cookie); viewers see the
fleet and rollouts, operators can also start, pause, resume and abort rollouts.
"""

from server.console.router import console_router

__all__ = ["console_router"]
