"""Parts shared by bench_ota.py and its fleet phase (ota_fleet.py): the padded release they
publish, the plain download they compare against, and the byte-counting wrapper around the
server's app."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: the timed agent child loads none of the server
    from edgeops.schemas import ReleaseInfo
    from server.registry.artifact_store import ArtifactStore
    from server.trust.repository import TufRepository

__all__ = ["COUNTS_PATH", "CountingApp", "PaddedRelease", "build_model", "plain_download",
           "publish_padded"]

COUNTS_PATH = "/_bench/served"  # CountingApp answers here with its counts (when asked to)


def build_model(weights: np.ndarray, pad_bytes: int) -> bytes:
    """The tests' tiny classifier plus an initializer of `pad_bytes` (what makes it big)."""
    from onnx import TensorProto, helper, numpy_helper

    pad = np.random.default_rng(0).standard_normal(max(1, pad_bytes // 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
            helper.make_node("ReduceSum", ["pad"], ["pad_sum"], keepdims=0),
        ],
        "padded",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10]),
            helper.make_tensor_value_info("pad_sum", TensorProto.FLOAT, []),
        ],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(pad, "pad")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass(frozen=True)
class PaddedRelease:
    target: str  # bench/<version>/model.fp32.onnx
    path: Path  # the artifact
    sha256: str
    info: ReleaseInfo
    size: int  # the artifact's bytes

    def url(self, server_url: str) -> str:
        """Where the server serves the artifact (consistent snapshots: hash-prefixed)."""
        directory, _, name = self.target.rpartition("/")
        return f"{server_url}/tuf/targets/{directory}/{self.sha256}.{name}"


def publish_padded(
    repository: TufRepository, store: ArtifactStore, work: Path, version: int, pad_bytes: int
) -> PaddedRelease:
    """Sign release `version` of model "bench" (the padded classifier, golden vectors
    computed from its weights) as a TUF target, with its artifact in the server's store."""
    from edgeops.schemas import GoldenVectors, InputSchema, ReleaseInfo, target_path

    weights = np.random.default_rng(version).normal(0, 0.3, (64, 10)).astype(np.float32)
    data = build_model(weights, pad_bytes)
    inputs = np.random.default_rng(version).uniform(0, 16, (2, 64)).astype(np.float32)
    logits = inputs.astype(np.float64) @ weights
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    info = ReleaseInfo(
        model="bench", version=version, format="fp32",
        input=InputSchema(shape=[None, 64], min_value=0, max_value=16, feature_bin_edges=[0.0, 8.0, 16.0]),
        output_name="probabilities", num_classes=10,
        golden=GoldenVectors(inputs=inputs.tolist(), outputs=probs.tolist(), atol=1e-4),
    )
    path = work / f"model-{version}.onnx"
    path.write_bytes(data)
    sha, _ = store.put_file(path)
    target = target_path("bench", version, "fp32")
    repository.add_target(target, path, info.to_custom())
    return PaddedRelease(target, path, sha, info, len(data))


def plain_download(url: str, into: Path) -> float:
    """The baseline: `curl -o` plus `sha256sum`, done in one pass over the stream, reading
    what the socket has (as the agent's fetcher does) rather than waiting to fill 1 MB."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, open(into, "wb") as out:  # noqa: S310
        while chunk := response.read1(1024 * 1024):
            out.write(chunk)
            digest.update(chunk)
    digest.hexdigest()
    elapsed = time.perf_counter() - started
    into.unlink()
    return elapsed


class CountingApp:
    """The server's ASGI app, counting the body bytes it sends under /tuf/ (and in all).
    With `answer_counts`, a GET of COUNTS_PATH returns the counts as JSON (not counted),
    so a parent can read them from a server running in another process."""

    def __init__(self, app: Any, *, answer_counts: bool = False) -> None:
        self.app = app
        self.answer_counts = answer_counts
        self.targets_bytes = 0
        self.metadata_bytes = 0
        self.total_bytes = 0

    def counts(self) -> dict[str, int]:
        return {"targets_bytes": self.targets_bytes, "metadata_bytes": self.metadata_bytes,
                "total_bytes": self.total_bytes}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if self.answer_counts and scope.get("type") == "http" and path == COUNTS_PATH:
            body = json.dumps(self.counts()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return

        async def counting(message: Any) -> None:
            if message["type"] == "http.response.body":
                size = len(message.get("body", b""))
                self.total_bytes += size
                if path.startswith("/tuf/targets/"):
                    self.targets_bytes += size
                elif path.startswith("/tuf/metadata/"):
                    self.metadata_bytes += size
            await send(message)

        await self.app(scope, receive, counting)
