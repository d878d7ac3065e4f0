"""Issue 16 item 8, the console: attacks a web page, a stolen cookie or a framing site can
mount on a logged-in operator, each sent to a real server (uvicorn, SQLite) and refused.

Each test first makes the attacker's request (a cross-site form post, a form without the
session's CSRF token, the cookie replayed as an API token, an expired or logged-out
session, a framing page), then shows it is refused and that the operator's own use works.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from server.auth.tokens import create_token
from server.console.auth import CONSOLE_COOKIE
from server.console.forms import CSRF_FIELD
from server.db.tables import AuditEntry, ConsoleSession, Rollout
from server.rollouts.controller import RolloutPolicy
from tests.security.http_world import HttpWorld, http_world
from tests.server.console.support import console_login, console_post, csrf_of

pytestmark = [pytest.mark.security, pytest.mark.integration]

EVIL = "http://evil.example"
PAGES = (
    "/console/",
    "/console/rollouts",
    "/console/devices",
    "/console/devices/dev-1",
    "/console/pipeline",
    "/console/monitor",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpWorld]:
    with http_world(tmp_path_factory.mktemp("console-security")) as w:
        yield w


@pytest.fixture
def operator(world: HttpWorld) -> Iterator[httpx.Client]:
    with world.client() as client:
        yield console_login(client, world.tokens["operator"])


def paused_rollout(world: HttpWorld) -> int:
    with world.session_factory.begin() as session:
        rollout = Rollout(
            target=world.release.target_path,
            policy=RolloutPolicy().to_json(),
            status="paused",
            created_by="ops",
        )
        session.add(rollout)
        session.flush()
        return rollout.id


def status_of(world: HttpWorld, rollout_id: int) -> str:
    with world.session_factory() as session:
        return session.scalars(select(Rollout.status).where(Rollout.id == rollout_id)).one()


def test_a_cross_site_post_is_refused_even_with_the_session_and_its_token(
    world: HttpWorld, operator: httpx.Client
) -> None:
    rollout_id = paused_rollout(world)
    path = f"/console/rollouts/{rollout_id}/resume"
    token = csrf_of(operator)

    # A page elsewhere submits the form: the browser sends its own Origin, or (privacy
    # settings, old browsers) only a Referer, or neither.
    foreign = [
        {"origin": EVIL},
        {"origin": "null"},
        {"origin": "", "referer": f"{EVIL}/console/"},
        {"origin": ""},
    ]
    refused = [operator.post(path, data={CSRF_FIELD: token}, headers=h) for h in foreign]

    assert [r.status_code for r in refused] == [403] * 4
    assert "cross-site request refused" in refused[0].text
    assert status_of(world, rollout_id) == "paused"
    # Also before logging in: a login CSRF cannot plant the attacker's session.
    planted = operator.post(
        "/console/login", data={"token": world.tokens["viewer"]}, headers={"origin": EVIL}
    )
    assert planted.status_code == 403

    same_site = operator.post(
        path, data={CSRF_FIELD: token}, headers={"origin": "", "referer": f"{world.url}/console/"}
    )
    assert same_site.status_code == 303 and status_of(world, rollout_id) == "running"


def test_a_form_without_this_sessions_csrf_token_is_refused(
    world: HttpWorld, operator: httpx.Client
) -> None:
    rollout_id = paused_rollout(world)
    path = f"/console/rollouts/{rollout_id}/resume"
    with world.client() as other:
        someone_elses = csrf_of(console_login(other, world.tokens["operator"]))

    # Same origin (a script injected on a sibling page, or SameSite-exempt navigation):
    # no token, a guessed one, another session's.
    attempts = [
        operator.post(path),
        operator.post(path, data={CSRF_FIELD: "0" * 64}),
        operator.post(path, data={CSRF_FIELD: someone_elses}),
        operator.post(path, data={CSRF_FIELD: "é" * 64}),
    ]

    assert [r.status_code for r in attempts] == [403] * 4
    assert "CSRF token is missing or is not this session's" in attempts[0].text
    assert status_of(world, rollout_id) == "paused"
    assert console_post(operator, path).status_code == 303
    assert status_of(world, rollout_id) == "running"


def test_every_console_form_carries_the_csrf_token(
    world: HttpWorld, operator: httpx.Client
) -> None:
    rollout_id = paused_rollout(world)
    token = csrf_of(operator)

    for path in (*PAGES, f"/console/rollouts/{rollout_id}"):
        page = operator.get(path)
        forms = re.findall(r'<form method="post"[^>]*>(.*?)</form>', page.text, re.S)
        assert page.status_code == 200 and forms, path
        assert all(f'name="{CSRF_FIELD}" value="{token}"' in form for form in forms), path


def test_the_cookie_is_a_session_never_the_api_token(world: HttpWorld) -> None:
    with world.client(headers={"origin": world.url}) as browser:
        login = browser.post("/console/login", data={"token": world.tokens["operator"]})
        cookie, set_cookie = browser.cookies[CONSOLE_COOKIE], login.headers["set-cookie"]
        # What a stolen cookie buys at the API: nothing, as a bearer token or as a cookie.
        as_bearer = httpx.get(
            f"{world.url}/api/rollouts", headers={"Authorization": f"Bearer {cookie}"}
        )
        as_cookie = httpx.get(f"{world.url}/api/rollouts", cookies={CONSOLE_COOKIE: cookie})
        raw_token_cookie = httpx.get(
            f"{world.url}/console/",
            follow_redirects=False,
            cookies={CONSOLE_COOKIE: world.tokens["operator"]},
        )

    assert cookie != world.tokens["operator"] and cookie.startswith("eos_")
    assert as_bearer.status_code == 401 and as_cookie.status_code == 401
    assert raw_token_cookie.status_code == 303  # the API token is no session
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie
    assert "Path=/console" in set_cookie and "Secure" not in set_cookie  # plain HTTP here
    with world.session_factory() as session:
        stored = set(session.scalars(select(ConsoleSession.session_sha256)))
    assert hashlib.sha256(cookie.encode()).hexdigest() in stored  # only its hash at rest
    assert cookie not in (world.settings.home / "registry.db").read_bytes().decode("latin-1")


def _backdate(world: HttpWorld, cookie: str, **ago: timedelta) -> None:
    moments = {column: datetime.now(UTC) - delta for column, delta in ago.items()}
    with world.session_factory.begin() as session:
        session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.session_sha256 == hashlib.sha256(cookie.encode()).hexdigest())
            .values(**moments)
        )


@pytest.mark.parametrize(
    "ago",
    [
        {"last_seen_at": timedelta(seconds=1801)},  # idle past console_session_idle_s
        {"created_at": timedelta(hours=12, seconds=1)},  # older than console_session_max_s
    ],
    ids=["idle", "absolute"],
)
def test_an_expired_session_is_refused(world: HttpWorld, ago: dict[str, timedelta]) -> None:
    with world.client() as browser:
        console_login(browser, world.tokens["viewer"])
        assert browser.get("/console/").status_code == 200

        _backdate(world, browser.cookies[CONSOLE_COOKIE], **ago)
        page = browser.get("/console/")
        poll = browser.get("/console/rollouts/1/progress")

    assert page.status_code == 303 and page.headers["location"] == "/console/login"
    assert poll.status_code == 401


def test_logout_and_revocation_end_the_session(world: HttpWorld) -> None:
    with world.client() as browser:
        console_login(browser, world.tokens["operator"])
        kept = browser.cookies[CONSOLE_COOKIE]
        assert console_post(browser, "/console/logout").headers["location"] == "/console/login"
    # The cookie copied before logout no longer opens anything.
    replayed = httpx.get(f"{world.url}/console/", cookies={CONSOLE_COOKIE: kept})
    assert replayed.status_code == 303 and replayed.headers["location"] == "/console/login"

    with world.session_factory.begin() as session:
        secret = create_token(session, "leaver", "viewer", "test", owner="leaver")[1]
    with world.client() as browser:
        console_login(browser, secret)
        revoked = httpx.delete(f"{world.url}/api/tokens/leaver", headers=world.bearer("admin"))
        assert revoked.status_code == 200
        assert browser.get("/console/").status_code == 303


def test_the_cookie_is_secure_under_https_or_when_the_setting_asks(world: HttpWorld) -> None:
    https = TestClient(
        world.app,
        base_url="https://testserver",
        follow_redirects=False,
        headers={"origin": "https://testserver"},
    )
    secure = https.post("/console/login", data={"token": world.tokens["viewer"]})
    assert secure.status_code == 303 and "Secure" in secure.headers["set-cookie"]

    world.app.state.settings = dataclasses.replace(world.settings, console_secure_cookie=True)
    try:
        behind_proxy = TestClient(
            world.app, follow_redirects=False, headers={"origin": "http://testserver"}
        )
        flagged = behind_proxy.post("/console/login", data={"token": world.tokens["viewer"]})
    finally:
        world.app.state.settings = world.settings
    assert "Secure" in flagged.headers["set-cookie"]


def test_pages_cannot_be_framed_and_run_no_inline_script(
    world: HttpWorld, operator: httpx.Client
) -> None:
    for path in (*PAGES, "/console/login"):
        page = operator.get(path)
        csp = page.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp, path
        assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
        assert page.headers.get("x-frame-options") == "DENY", path
        assert page.headers.get("x-content-type-options") == "nosniff", path
        assert page.headers.get("referrer-policy") == "same-origin", path
        # The policy would stop an inline script; the pages must not need one.
        assert re.findall(r"<script(?![^>]*\ssrc=)[^>]*>", page.text) == [], path
        assert re.findall(r"\son[a-z]+\s*=", page.text) == [], path


def test_failed_logins_are_audited_as_denied(world: HttpWorld) -> None:
    with world.client() as browser:
        browser.headers["origin"] = world.url
        failed = browser.post("/console/login", data={"token": "eo_guessed"})

    assert failed.status_code == 303 and "error=" in failed.headers["location"]
    with world.session_factory() as session:
        entry = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.resource == "/console/login")
            .order_by(AuditEntry.id.desc())
            .limit(1)
        ).one()
    assert (entry.actor, entry.outcome) == ("anonymous", "denied")
    assert "refused" in (entry.detail or "") and "eo_guessed" not in (entry.detail or "")
