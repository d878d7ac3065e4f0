"""The on-device store of labelled examples: predictions whose true label the app reported.

    Agent.feedback(prediction_id, label) ──► add() ──► SQLite (WAL) ──► examples() ──► ClientApp

- Never sent anywhere: it is read only on the device (the federated ClientApp may train on
  it; only model updates leave, under secure aggregation).
- Bounded: at most `max_examples`; a new example beyond that drops the oldest.
- Crash-safe: each `add` is one transaction in WAL mode with `synchronous=FULL`, so a
  committed label survives a power cut and a torn write never corrupts the file.
- A prediction is labelled once: adding the same prediction id again is refused.
- Split for training and evaluation by a stable hash of the prediction id
  (`feedback_split`, 1 in `EVAL_ONE_IN` held out): an example is always on the same side,
  whichever device, process or run reads it, so the fleet evaluation never scores a model
  on rows it was trained on.

One `FeedbackStore` per agent home (one file, one connection, a lock).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agent.telemetry.sqlite_file import open_wal_database
from edgeops.errors import ConfigError, PayloadError
from edgeops.federated.config import EVAL_ONE_IN, SPLITS, FeedbackSplit, feedback_split

__all__ = [
    "EVAL_ONE_IN",
    "FEEDBACK_FILE",
    "FeedbackSplit",
    "FeedbackStore",
    "LabelledExamples",
    "feedback_split",
]

FEEDBACK_FILE = "feedback.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prediction_id TEXT NOT NULL UNIQUE,
    model TEXT,
    version INTEGER,
    label INTEGER NOT NULL,
    predicted INTEGER NOT NULL,
    shape TEXT NOT NULL,
    inputs BLOB NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class LabelledExamples:
    """Inputs (n, *shape) float32, true labels and the classes the model predicted."""

    inputs: NDArray[np.float32]
    labels: NDArray[np.int64]
    predicted: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)


class FeedbackStore:
    """A bounded, crash-safe FIFO of labelled examples on disk."""

    def __init__(self, path: Path, *, max_examples: int = 10_000) -> None:
        if max_examples < 1:
            raise ConfigError(f"feedback_max_examples must be >= 1, got {max_examples}")
        self.path = Path(path)
        self._max = max_examples
        self._lock = threading.Lock()
        self._db = open_wal_database(
            self.path, _SCHEMA, synchronous="FULL", what="the feedback store"
        )

    def add(
        self,
        prediction_id: str,
        inputs: NDArray[np.float32],
        label: int,
        predicted: int,
        now: float,
        *,
        model: str | None = None,
        version: int | None = None,
    ) -> None:
        """Store one labelled example; the oldest beyond the cap go. A repeated id is a
        PayloadError (a prediction has one true label)."""
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        shape = ",".join(str(d) for d in x.shape)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO examples (prediction_id, model, version, label, predicted,"
                    " shape, inputs, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (prediction_id, model, version, int(label), int(predicted), shape,
                     x.tobytes(), now),
                )
                self._db.execute(
                    "DELETE FROM examples WHERE seq <= (SELECT max(seq) FROM examples) - ?",
                    (self._max,),
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as err:
                self._db.execute("ROLLBACK")
                raise PayloadError(f"prediction {prediction_id!r} already has a label") from err
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM examples").fetchone()
        return int(count)

    def examples(
        self,
        model: str | None = None,
        limit: int | None = None,
        *,
        split: FeedbackSplit | None = None,
        until: float | None = None,
    ) -> LabelledExamples:
        """The stored examples, oldest first (of `model` only, if given; the newest `limit`;
        only the `split` side of `feedback_split`, if given: the limit counts that side;
        only those labelled at or before `until`, if given)."""
        if split is not None and split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
        query = "SELECT label, predicted, shape, inputs, prediction_id FROM examples"
        params: list[object] = []
        where: list[str] = []
        if model is not None:
            where.append("model = ?")
            params.append(model)
        if until is not None:
            where.append("created_at <= ?")
            params.append(until)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY seq DESC"
        if limit is not None and split is None:
            query += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        if split is not None:
            rows = [row for row in rows if feedback_split(row[4]) == split][:limit]
        rows = rows[::-1]
        shapes = {row[2] for row in rows}
        if len(shapes) > 1:  # a model with another input shape: keep the newest shape
            newest = rows[-1][2]
            rows = [row for row in rows if row[2] == newest]
        if not rows:
            empty = np.zeros((0,), dtype=np.int64)
            return LabelledExamples(np.zeros((0,), dtype=np.float32), empty, empty.copy())
        shape = tuple(int(d) for d in rows[0][2].split(",") if d)
        inputs = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.float32)
        return LabelledExamples(
            inputs.reshape(len(rows), *shape).copy(),
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
