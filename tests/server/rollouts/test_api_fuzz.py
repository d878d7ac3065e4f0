"""Property-based run over the published OpenAPI spec (Schemathesis): whatever it sends,
the server answers 4xx, never 5xx — as an admin (every route reachable), as a viewer (no
mutation succeeds) and without a token (every /api route but enrollment refuses)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from server.app.build import build_app
from server.app.home import init_home
from server.auth.tokens import create_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker
from tests.server.helpers import live_server, make_package
from tests.server.rollouts.conftest import add_devices

pytestmark = [pytest.mark.rollouts, pytest.mark.integration]

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
OPEN_PATHS = ("/api/enroll",)  # the one-time enrollment token is the credential there
EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = MosquittoBroker(workdir=tmp / "mosquitto").start()
    settings = ServerSettings(home=tmp / "server", broker_host=broker.host,
                              broker_port=broker.port)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    release = publish_package(settings, factory, make_package(tmp / "pkg", seed=1), "int8")
    add_devices(factory, [f"dev-{i}" for i in range(5)], release.target_path)
    with factory.begin() as session:
        viewer = create_token(session, "fuzz-viewer", "viewer", "test")[1]
    with live_server(build_app(settings)) as url:  # publisher, ingest and runner running
        yield {"url": url, "admin": settings.admin_token_file.read_text().strip(),
               "viewer": viewer}
    close_database(factory)
    broker.kill()


@pytest.fixture(scope="module")
def api_schema(fuzz_app: dict) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(fuzz_app["url"] + "/openapi.json")


def for_every_operation(api_schema: schemathesis.BaseSchema,
                        check: Callable[[schemathesis.Case], None]) -> list[str]:
    """Run `check` on generated cases of every operation; return the failures, by operation.
    (Schemathesis' pytest plugin does not load under this pytest, so hypothesis drives it.)"""
    failures = []
    operations = calls = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            check(case)

        try:
            run()
        except AssertionError as err:
            failures.append(f"{operation.method.upper()} {operation.path}: {err}")
    assert operations >= 20 and calls >= 2 * operations, (operations, calls)
    return failures


FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=list(HealthCheck), derandomize=True, database=None)


def test_admin_requests_never_get_a_5xx(api_schema: schemathesis.BaseSchema,
                                        fuzz_app: dict) -> None:
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {fuzz_app['admin']}"})
        assert response.status_code < 500, (case.as_curl_command(), response.text[:300])

    assert not for_every_operation(api_schema, check)


def test_viewer_cannot_mutate_anything(api_schema: schemathesis.BaseSchema,
                                       fuzz_app: dict) -> None:
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {fuzz_app['viewer']}"})
        assert response.status_code < 500, response.text[:300]
        if case.method.upper() in MUTATING and not case.path.startswith(OPEN_PATHS):
            assert response.status_code in (401, 403, 422), (case.path, response.status_code)

    assert not for_every_operation(api_schema, check)


def test_requests_without_a_token_are_refused(api_schema: schemathesis.BaseSchema) -> None:
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": ""})
        assert response.status_code < 500, response.text[:300]
        if case.path.startswith("/api/") and not case.path.startswith(OPEN_PATHS):
            assert response.status_code in (401, 422), (case.path, response.status_code)

    assert not for_every_operation(api_schema, check)
