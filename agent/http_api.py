"""The agent's local HTTP API (stdlib only), served from its own threads.

    POST /predict   {"inputs": [[...], ...]}
                    -> 200 {"outputs": [[...]], "classes": [...], "model": ..., "version": ...,
                            "prediction_id": ..., "prediction_ids": [...]}
                    -> 400 bad JSON or input shape, 413 body too large, 503 no model yet
    POST /feedback  {"prediction_id": "...", "label": 3}   the true label of a prediction
                    -> 200 {"prediction_id": ..., "label": ...}
                    -> 400 bad JSON, unknown or already labelled id, label not a class
    GET  /status    -> 200 the DeviceStatus as JSON

Every request is first checked by `agent.api_auth.ApiGuard` (Host 421, Origin 403; POST:
bearer token 401, application/json 415) before its body is read; /status needs no token.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from agent.api_auth import ApiGuard, Refusal
from agent.http_deadline import HeaderDeadline
from agent.runtime import NoModelError
from edgeops.errors import PayloadError
from edgeops.messages import DeviceStatus

__all__ = ["AgentApi", "HttpApi", "PredictionLike"]

logger = logging.getLogger(__name__)


class PredictionLike(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class AgentApi(Protocol):
    """What the HTTP API needs from the agent."""

    device_id: str

    def predict(self, inputs: Any) -> PredictionLike: ...

    def feedback(self, prediction_id: str, label: int) -> None: ...

    def status(self) -> DeviceStatus: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], api: AgentApi, max_body_bytes: int, token: str
    ) -> None:
        self.api = api
        self.max_body_bytes = max_body_bytes
        super().__init__(address, _Handler)
        self.guard = ApiGuard.for_address(token, address[0], self.server_port)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the bound address with socket.getfqdn: a reverse
        # DNS lookup that can stall an agent's start for seconds on a device without DNS.
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = host if isinstance(host, str) else bytes(host).decode()


class _Handler(HeaderDeadline, BaseHTTPRequestHandler):  # header-read and idle timeouts
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: with Nagle on, a keep-alive client's delayed
    # ACK holds the body back ~40 ms per request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        logger.debug("device %s http: " + format, self.server.api.device_id, *args)

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, {"error": message})

    def _refused(self, *, needs_token: bool) -> bool:
        """Answer a request the guard refuses (without reading its body); True if it did."""
        refusal: Refusal | None = self.server.guard.check(
            self.headers, method=self.command, needs_token=needs_token
        )
        if refusal is None:
            return False
        self.close_connection = True
        data = json.dumps({"error": refusal.message}).encode()
        self.send_response(refusal.status)
        for name, value in (*refusal.headers, ("Content-Type", "application/json")):
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        if self._refused(needs_token=False):
            return
        if self.path.split("?")[0] == "/status":
            status = self.server.api.status()
            self._send(HTTPStatus.OK, status.model_dump(mode="json", by_alias=True))
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        if self._refused(needs_token=True):
            return
        route = self.path.split("?")[0]
        if route not in ("/predict", "/feedback"):
            self._discard_body()
            self._error(HTTPStatus.NOT_FOUND, f"no route POST {self.path}")
            return
        body = self._read_body()
        if body is None:
            return
        try:
            request = json.loads(body)
        except RecursionError:  # json's C decoder recurses once per nesting level
            self._error(HTTPStatus.BAD_REQUEST, "body is JSON nested too deeply")
            return
        except (UnicodeDecodeError, ValueError) as err:
            self._error(HTTPStatus.BAD_REQUEST, f"body is not JSON: {err}")
            return
        if route == "/feedback":
            self._feedback(request)
            return
        if not isinstance(request, dict) or "inputs" not in request:
            self._error(HTTPStatus.BAD_REQUEST, 'body must be a JSON object {"inputs": [[...], ...]}')
            return
        try:
            prediction = self.server.api.predict(request["inputs"])
        except PayloadError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
        except NoModelError as err:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
        else:
            self._send(HTTPStatus.OK, prediction.to_json())

    def _feedback(self, request: Any) -> None:
        usage = 'body must be a JSON object {"prediction_id": "...", "label": <class>}'
        if not isinstance(request, dict) or set(request) != {"prediction_id", "label"}:
            self._error(HTTPStatus.BAD_REQUEST, usage)
            return
        prediction_id, label = request["prediction_id"], request["label"]
        if not isinstance(prediction_id, str):
            self._error(HTTPStatus.BAD_REQUEST, f"prediction_id must be a string; {usage}")
            return
        if isinstance(label, bool) or not isinstance(label, int):
            self._error(HTTPStatus.BAD_REQUEST, f"label must be an integer class; {usage}")
            return
        try:
            self.server.api.feedback(prediction_id, label)
        except PayloadError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
        else:
            self._send(HTTPStatus.OK, {"prediction_id": prediction_id, "label": label})

    def _discard_body(self) -> None:
        self.close_connection = True

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413/400."""
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return None
        try:
            length = int(raw_length)
        except ValueError:
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, f"bad Content-Length {raw_length!r}")
            return None
        limit = self.server.max_body_bytes
        if length < 0 or length > limit:
            self.close_connection = True  # do not read what we refuse
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {limit}"
            )
            return None
        return self.rfile.read(length)


class HttpApi:
    """A ThreadingHTTPServer bound to one agent, running in a daemon thread."""

    def __init__(
        self, api: AgentApi, host: str, port: int, max_body_bytes: int, token: str
    ) -> None:
        self._server = _Server((host, port), api, max_body_bytes, token)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long shutdown() may wait
            name=f"edgeops-agent-{api.device_id}-http",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
