"""Test helpers for the agent: tiny ONNX models, releases, a real signed TUF repository
served by a stdlib HTTP server, and a way to install a model into a home directly.

The repository is built with python-tuf's Metadata API, consistent_snapshot=True, laid out
as the server lays it out: `<root>/tuf/metadata/<v>.<role>.json`, `timestamp.json`, and
`<root>/tuf/targets/<dir>/<sha256>.<name>`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import numpy as np
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edgeops.schemas import GoldenVectors, InputSchema, ReleaseInfo, target_path

NUM_FEATURES = 64
NUM_CLASSES = 10
BIN_EDGES = [float(x) for x in np.linspace(0.0, 16.0, 9)]


# Models --------------------------------------------------------------------------------


def model_weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, (NUM_FEATURES, NUM_CLASSES)).astype(np.float32)


def softmax_outputs(weights: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    logits = inputs.astype(np.float64) @ weights.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def build_model(weights: np.ndarray) -> bytes:
    """input "input" [None, 64] float32 -> MatMul -> Softmax -> "probabilities"."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, NUM_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, NUM_CLASSES])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def make_release(
    version: int, weights: np.ndarray, *, model: str = "digits", golden_weights: np.ndarray | None = None
) -> ReleaseInfo:
    """A release whose golden outputs come from `golden_weights` (default: the model's own)."""
    inputs = np.random.default_rng(1000 + version).uniform(0, 16, (4, NUM_FEATURES)).astype(np.float32)
    outputs = softmax_outputs(weights if golden_weights is None else golden_weights, inputs)
    return ReleaseInfo(
        model=model,
        version=version,
        format="fp32",
        input=InputSchema(
            shape=[None, NUM_FEATURES], min_value=0.0, max_value=16.0, feature_bin_edges=BIN_EDGES
        ),
        output_name="probabilities",
        num_classes=NUM_CLASSES,
        golden=GoldenVectors(inputs=inputs.tolist(), outputs=outputs.tolist(), atol=1e-4),
    )


def install_model(home: Path, release: ReleaseInfo, data: bytes) -> None:
    """Put a model straight into the staging slot and activate it (no TUF)."""
    from agent.ota.model_store import ModelStore

    store = ModelStore(home)
    slot = store.staging_slot()
    target = target_path(release.model, release.version, release.format)
    store.stage(slot, data, target, release, hashlib.sha256(data).hexdigest())
    store.activate(slot)


# TUF repository -------------------------------------------------------------------------


def _expiry(days: int = 7) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)


class TufTestRepository:
    """A signed repository on disk, one ed25519 key per top-level role."""

    def __init__(self, root_dir: Path) -> None:
        self.root_dir = Path(root_dir)
        self.metadata_dir = self.root_dir / "tuf" / "metadata"
        self.targets_dir = self.root_dir / "tuf" / "targets"
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.signers = {role: CryptoSigner.generate_ed25519() for role in ("root", "targets", "snapshot", "timestamp")}
        self.root = Metadata(Root(expires=_expiry(365), consistent_snapshot=True))
        for role, signer in self.signers.items():
            self.root.signed.add_key(signer.public_key, role)
        self.targets = Metadata(Targets(expires=_expiry()))
        self.snapshot = Metadata(Snapshot(expires=_expiry()))
        self.timestamp = Metadata(Timestamp(expires=_expiry()))
        self._write("root", self.root, f"{self.root.signed.version}.root.json")
        self.publish(bump=False)

    def _write(self, role: str, metadata: Metadata[Any], filename: str) -> bytes:
        metadata.signatures.clear()
        metadata.sign(self.signers[role])
        data = metadata.to_bytes(JSONSerializer(compact=False))
        (self.metadata_dir / filename).write_bytes(data)
        return data

    @property
    def root_bytes(self) -> bytes:
        return (self.metadata_dir / f"{self.root.signed.version}.root.json").read_bytes()

    def publish(self, *, bump: bool = True) -> None:
        """Sign and write targets, snapshot, timestamp (new versions when `bump`)."""
        if bump:
            self.targets.signed.version += 1
            self.snapshot.signed.version += 1
            self.timestamp.signed.version += 1
        self._write("targets", self.targets, f"{self.targets.signed.version}.targets.json")
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        self._write("snapshot", self.snapshot, f"{self.snapshot.signed.version}.snapshot.json")
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self._write("timestamp", self.timestamp, "timestamp.json")

    def artifact_path(self, target: TargetFile) -> Path:
        directory, _, name = target.path.rpartition("/")
        return self.targets_dir / directory / f"{target.hashes['sha256']}.{name}"

    def add_release(self, release: ReleaseInfo, data: bytes) -> str:
        """Sign `data` as the release's target and publish. Returns the target path."""
        path = target_path(release.model, release.version, release.format)
        return self.add_signed(path, data, release.to_custom())

    def add_signed(self, path: str, data: bytes, custom: dict[str, Any]) -> str:
        """Sign `data` as the target `path` with `custom` (a release, a delta, a compressed
        copy) and publish. Returns the target path."""
        info = TargetFile.from_data(path, data, ["sha256"])
        info.unrecognized_fields["custom"] = custom
        self.targets.signed.targets[path] = info
        artifact = self.artifact_path(info)
        artifact.parent.mkdir(parents=True, exist_ok=True)
        artifact.write_bytes(data)
        self.publish()
        return path

    def tamper(self, path: str) -> None:
        """Flip one byte of the served artifact, after it was signed."""
        artifact = self.artifact_path(self.targets.signed.targets[path])
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class ServerThread:
    """Serves a stdlib HTTP server (bound to a free port of 127.0.0.1) in a daemon thread
    while entered."""

    def __init__(self, server: ThreadingHTTPServer, scheme: str = "http") -> None:
        server.daemon_threads = True
        self._server = server
        self._scheme = scheme
        # shutdown() waits for serve_forever's next poll: keep it short so teardown is quick.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class StaticServer(ServerThread):
    """A stdlib HTTP server for a directory."""

    def __init__(self, directory: Path) -> None:
        handler = partial(_QuietHandler, directory=str(directory))
        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), handler))


# MQTT ----------------------------------------------------------------------------------


class Subscriber:
    """A separate paho client that records every message on `topic` (retained ones too)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not subscribed.wait(5):
            raise TimeoutError(f"could not subscribe to {topic}")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout_s: float = 10.0, *, start: int = 0) -> bytes:
        """The first payload from message `start` on for which `predicate(payload)` holds."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for _, payload, _ in self.messages[start:]:
                    if predicate(payload):
                        return payload
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching message among {len(self.messages)}")
                self._cond.wait(remaining)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        self._client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
