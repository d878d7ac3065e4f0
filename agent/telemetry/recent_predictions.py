"""Recent predictions by id, so a later feedback label can be joined to its inputs.

Each predict call gets one id, `<call id>`; the i-th sample of the call is `<call id>.<i>`
(a single-sample call may be labelled by its bare call id). Recording is O(1) per call,
whatever its batch size: the call's arrays are kept as they are. Bounded by samples: the
oldest calls go first when more than `max_samples` are held (least recently recorded).
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from edgeops.errors import ConfigError, PayloadError

__all__ = ["RecentPredictions", "RememberedPrediction", "sample_ids"]


@dataclass(slots=True)
class _Call:
    inputs: np.ndarray
    probabilities: np.ndarray
    model: str
    version: int
    labelled: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class RememberedPrediction:
    """One sample of a past prediction."""

    prediction_id: str
    inputs: np.ndarray
    predicted: int
    num_classes: int  # outputs of the model that made it
    model: str
    version: int


def sample_ids(call_id: str, count: int) -> list[str]:
    """The prediction ids of the `count` samples of call `call_id`."""
    return [f"{call_id}.{i}" for i in range(count)]


class RecentPredictions:
    """A bounded map of recent predict calls, keyed by call id."""

    def __init__(self, max_samples: int = 10_000) -> None:
        if max_samples < 1:
            raise ConfigError(f"prediction_cache_size must be >= 1, got {max_samples}")
        self._max = max_samples
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._samples = 0
        self._prefix = secrets.token_hex(6)  # ids stay unique across agent restarts
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def add(
        self, inputs: np.ndarray, probabilities: np.ndarray, model: str, version: int
    ) -> str:
        """Remember a call (its arrays, not copied: the caller must not reuse them)."""
        call_id = f"{self._prefix}{next(self._counter):x}"
        with self._lock:
            self._calls[call_id] = _Call(inputs, probabilities, model, version)
            self._samples += len(inputs)
            while self._samples > self._max and len(self._calls) > 1:
                _, old = self._calls.popitem(last=False)
                self._samples -= len(old.inputs)
        return call_id

    def take(self, prediction_id: str) -> RememberedPrediction:
        """The sample `prediction_id`, marked labelled. PayloadError if it is unknown, too
        old or already labelled."""
        if not isinstance(prediction_id, str) or not prediction_id:
            raise PayloadError("prediction_id must be a non-empty string")
        call_id, _, index_text = prediction_id.partition(".")
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                raise PayloadError(
                    f"unknown prediction_id {prediction_id!r} (never made, or too old)"
                )
            if not index_text and len(call.inputs) == 1:
                index = 0
            elif index_text.isdigit() and int(index_text) < len(call.inputs):
                index = int(index_text)
            else:
                raise PayloadError(
                    f"unknown prediction_id {prediction_id!r}: the call had "
                    f"{len(call.inputs)} samples, ids {call_id}.0 to {call_id}.{len(call.inputs) - 1}"
                )
            if index in call.labelled:
                raise PayloadError(f"prediction {prediction_id!r} already has a label")
            call.labelled.add(index)
        return RememberedPrediction(
            prediction_id=f"{call_id}.{index}",
            inputs=call.inputs[index],
            predicted=int(call.probabilities[index].argmax()),
            num_classes=int(call.probabilities.shape[1]),
            model=call.model,
            version=call.version,
        )

    def release(self, prediction_id: str) -> None:
        """Undo `take` (the label could not be stored): the sample may be labelled again."""
        call_id, _, index_text = prediction_id.partition(".")
        with self._lock:
            call = self._calls.get(call_id)
            if call is not None and index_text.isdigit():
                call.labelled.discard(int(index_text))
