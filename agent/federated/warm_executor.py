"""A warm SuperExec for a device's SuperNode: Flower's own ClientApp runtime, without
importing Python's world again for every message.

`flower-supernode` in its default (`subprocess`) isolation starts `flower-superexec`, which
starts a fresh `flwr-clientapp` process for every message the SuperLink sends. SecAgg+
sends four per round, so a device imports flwr four times a round and torch (the round's
training) once more, and flwr 1.42's `flwr-clientapp` serves one message and exits.
`flower-supernode --isolation process` leaves launching ClientApps to a separate process
that talks to the SuperNode's Runtime API. This is one:

    flower-supernode --superlink ... --isolation process --port 9094
    python -m agent.federated.warm_executor --runtime-api-address 127.0.0.1:9094

It imports flwr, the ClientApp's modules and torch once (`preload`), takes ClientApp tasks
from the SuperNode as `flower-superexec` does (the Runtime API's `AcquireTask`), and forks
one child per task that runs `run_clientapp`, the function `flwr-clientapp` runs, with the
task's token. Each message still gets a fresh process, whose state between messages is only
the Context the SuperNode keeps; only the imports are shared (copy-on-write).

POSIX only (fork). It speaks flwr's Runtime API through flwr's own client, so it follows
the flwr version pinned by the `federated` extra (1.42.x).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import run_clientapp

from edgeops.errors import ConfigError, EdgeOpsError, MissingDependencyError, TransportError
from edgeops.exit_codes import ExitCode, exit_code_for

__all__ = [
    "DEFAULT_PRELOAD",
    "ExecutorSettings",
    "RuntimeApiTasks",
    "TaskSource",
    "fork_clientapp",
    "main",
    "preload",
    "reap_children",
    "serve",
]

logger = logging.getLogger(__name__)

# What EdgeOps' ClientApp imports to train: its task client (torch, the task code) and
# torch._dynamo, which torch.optim imports on an optimizer's first use (~1.5 s).
DEFAULT_PRELOAD: tuple[str, ...] = ("agent.federated.task_client", "torch._dynamo")


@dataclass(frozen=True)
class ExecutorSettings:
    """runtime_api_address: the SuperNode's `--host:--port`. root_certificates: the CA of
    the Runtime API's certificate when the SuperNode serves it over TLS (`--ssl-certfile`),
    None for plain HTTP on loopback (the SuperNode's default)."""

    runtime_api_address: str
    root_certificates: Path | None = None
    poll_interval_s: float = 0.1
    preload: tuple[str, ...] = DEFAULT_PRELOAD

    def __post_init__(self) -> None:
        if not self.runtime_api_address:
            raise ConfigError("the warm executor needs the SuperNode's Runtime API address")
        if self.poll_interval_s <= 0:
            raise ConfigError(f"poll_interval_s must be > 0, got {self.poll_interval_s}")

    @property
    def insecure(self) -> bool:
        return self.root_certificates is None

    def certificates(self) -> bytes | None:
        if self.root_certificates is None:
            return None
        try:
            return self.root_certificates.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read {self.root_certificates}: {err}") from err


class TaskSource(Protocol):
    def acquire(self) -> str | None:
        """The token of the next ClientApp task to run, or None if there is none."""


class RuntimeApiTasks:
    """ClientApp tasks from a SuperNode's Runtime API (what `flower-superexec` polls)."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self._client = RuntimeHttpClient.from_server_address(
            server_address=settings.runtime_api_address,
            insecure=settings.insecure,
            root_certificates=settings.certificates(),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def acquire(self) -> str | None:
        """Flower's client retries while the SuperNode is unreachable; what it gives up on
        (a refused request, a TLS failure) is a TransportError."""
        try:
            response = self._client.AcquireTask(
                AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
            )
        except httpx.HTTPError as err:
            raise TransportError(f"the SuperNode's Runtime API refused AcquireTask: {err}") from err
        if response.HasField("task") and response.token:
            return str(response.token)
        return None

    def close(self) -> None:
        self._client.close()


def preload(modules: Sequence[str]) -> float:
    """Import `modules` once, here, so every forked ClientApp starts with them; seconds."""
    started = time.monotonic()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise MissingDependencyError(
                f"cannot preload {name!r} ({err}); install 'edgeops[federated]'"
            ) from err
    return time.monotonic() - started


def fork_clientapp(token: str, settings: ExecutorSettings) -> int:
    """Run one ClientApp task in a forked child; the child's pid.

    The child runs flwr's `run_clientapp` (pull the message, Context and FAB, load and call
    the ClientApp, push the reply) and leaves with `os._exit`, so nothing the executor
    registered (atexit, its HTTP client) runs twice. It watches the executor and stops if
    the executor dies, as `flwr-clientapp --parent-pid` does.
    """
    parent = os.getpid()
    certificates = settings.certificates()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        run_clientapp(
            runtime_api_address=settings.runtime_api_address,
            token=token,
            insecure=settings.insecure,
            certificates=certificates,
            parent_pid=parent,
        )
        code = 0
    except SystemExit as done:  # flwr_exit() ends every task with sys.exit
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:  # a child must never return into the executor's loop
        logger.exception("ClientApp task failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def reap_children() -> list[tuple[int, int]]:
    """Collect every finished child: (pid, exit status) pairs; never blocks."""
    finished: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return finished
        if pid == 0:
            return finished
        finished.append((pid, os.waitstatus_to_exitcode(status)))


def serve(
    tasks: TaskSource,
    launch: Callable[[str], int],
    *,
    poll_interval_s: float,
    stop: threading.Event,
    reap: Callable[[], list[tuple[int, int]]] = reap_children,
) -> int:
    """Launch every task `tasks` hands out until `stop` is set; the number launched.

    Asks again at once after a launch (another run may be waiting) and every
    `poll_interval_s` otherwise."""
    launched = 0
    while not stop.is_set():
        for pid, code in reap():
            if code != 0:
                logger.warning("ClientApp task process %d exited with %d", pid, code)
        token = tasks.acquire()
        if token is None:
            stop.wait(poll_interval_s)
            continue
        pid = launch(token)
        launched += 1
        logger.debug("ClientApp task started in process %d", pid)
    return launched


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.federated.warm_executor",
        description=(
            "Run the ClientApps of a SuperNode started with `--isolation process`: flwr, "
            "torch and the ClientApp are imported once, each task runs in a forked child."
        ),
    )
    parser.add_argument(
        "--runtime-api-address",
        required=True,
        help="the SuperNode's Runtime API, i.e. its --host:--port (e.g. 127.0.0.1:9094)",
    )
    parser.add_argument(
        "--root-certificates",
        type=Path,
        help="CA certificate of the Runtime API when the SuperNode serves it over TLS "
        "(--ssl-certfile); without it, plain HTTP (the SuperNode's loopback default)",
    )
    parser.add_argument(
        "--poll-interval-s",
        type=float,
        default=0.1,
        help="how often to ask the SuperNode for a task when it had none (default 0.1)",
    )
    parser.add_argument(
        "--preload",
        action="append",
        metavar="MODULE",
        help="a module to import before serving (repeatable; default: EdgeOps' ClientApp "
        f"modules {', '.join(DEFAULT_PRELOAD)})",
    )
    args = parser.parse_args(argv)
    # Our own lines only: flwr's logger has its own handler, and the Runtime API client's
    # httpx would log every poll at INFO.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    agent_logger = logging.getLogger("agent")
    agent_logger.addHandler(handler)
    agent_logger.setLevel(logging.INFO)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        settings = ExecutorSettings(
            runtime_api_address=args.runtime_api_address,
            root_certificates=args.root_certificates,
            poll_interval_s=args.poll_interval_s,
            preload=tuple(args.preload) if args.preload else DEFAULT_PRELOAD,
        )
        seconds = preload(settings.preload)
        logger.info(
            "warm executor for %s: preloaded %s in %.1f s",
            settings.runtime_api_address,
            ", ".join(settings.preload),
            seconds,
        )
        tasks = RuntimeApiTasks(settings)
    except EdgeOpsError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(exit_code_for(err))
    try:
        launched = serve(
            tasks,
            lambda token: fork_clientapp(token, settings),
            poll_interval_s=settings.poll_interval_s,
            stop=stop,
        )
    except EdgeOpsError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(exit_code_for(err))
    finally:
        tasks.close()
    logger.info("warm executor stopped after %d ClientApp tasks", launched)
    return int(ExitCode.OK)


if __name__ == "__main__":  # run the canonical module, so its logger is named for it
    from agent.federated.warm_executor import main as _main

    sys.exit(_main())
