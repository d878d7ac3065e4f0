"""Builders for server tests: a tiny ONNX model package, databases, a live HTTP server."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
NUM_FEATURES = 64
NUM_CLASSES = 10

INPUT_SCHEMA = {
    "name": "input",
    "shape": [None, NUM_FEATURES],
    "dtype": "float32",
    "min_value": 0.0,
    "max_value": 16.0,
    "feature_bin_edges": [0.0, 4.0, 8.0, 12.0, 16.0],
}


def write_onnx_model(path: Path, seed: int) -> None:
    """A MatMul + Softmax classifier: input [N, 64] float32 -> probabilities [N, 10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = (
        np.random.default_rng(seed).normal(0, 0.1, (NUM_FEATURES, NUM_CLASSES)).astype(np.float32)
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, NUM_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, NUM_CLASSES])],
        initializer=[numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def golden_for(path: Path, seed: int = 0, count: int = 3) -> dict[str, Any]:
    import onnxruntime

    inputs = np.random.default_rng(seed).uniform(0, 16, (count, NUM_FEATURES)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(["probabilities"], {"input": inputs})
    return {"inputs": inputs.tolist(), "outputs": outputs.tolist(), "atol": 1e-4}


def make_package(
    directory: Path, model: str = "digits", seed: int = 0, **report_overrides: Any
) -> Path:
    """Write model.fp32.onnx, model.int8.onnx and report.json like `edgeops model package`."""
    directory.mkdir(parents=True, exist_ok=True)
    release_info: dict[str, Any] = {}
    for offset, fmt in enumerate(("fp32", "int8")):
        path = directory / f"model.{fmt}.onnx"
        write_onnx_model(path, seed * 2 + offset)
        release_info[fmt] = {
            "schema": 1,
            "model": model,
            "format": fmt,
            "input": INPUT_SCHEMA,
            "output_name": "probabilities",
            "num_classes": NUM_CLASSES,
            "golden": golden_for(path),
        }
    report = {
        "sha256": {
            fmt: hashlib.sha256((directory / f"model.{fmt}.onnx").read_bytes()).hexdigest()
            for fmt in ("fp32", "int8")
        },
        "model": model,
        "task": "edgeops.tasks.digits:digits",
        "release_info": release_info,
        "metrics": {"fp32": {"accuracy": 0.97}, "int8": {"accuracy": 0.96}},
        "lineage": {"data_fingerprint": "a" * 64, "code_version": "test-1"},
        **report_overrides,
    }
    (directory / "report.json").write_text(json.dumps(report))
    return directory


def postgres_available() -> str | None:
    """None if PostgreSQL answers at 127.0.0.1:5432, else why not."""
    try:
        import psycopg2

        psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=2
        ).close()
    except Exception as err:  # any failure means: skip
        return f"PostgreSQL at 127.0.0.1:5432 (user postgres, db test) is unreachable: {err}"
    return None


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A database URL whose connections use a fresh schema, dropped afterwards."""
    from sqlalchemy import create_engine, text

    schema = f"edgeops_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
