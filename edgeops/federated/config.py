"""What the ServerApp tells each ClientApp in every round, as Flower's flat config record.

The server owns the training recipe (task, local epochs, learning rate, FedProx mu, how the
simulation partitions data); devices own their data. One dataclass, two directions:
`to_config()` on the server, `from_config()` on the device, so both sides agree on names.

A simulated run may also name a participants manifest (`ClientRecipe.participants_file`):
which device each simulated SuperNode plays. Its format is defined here, next to the recipe
that points at it, because both sides read it (the server writes it with
`server.federated.participants.write_participants`; the ClientApp reads it):

    {"num_partitions": 10,
     "participants": [{"device_id": "device-003", "cohort": "north", "partition": 3,
                       "feedback_path": "/.../device-003/feedback.db"}, ...]}

The k-th simulated SuperNode (`partition-id` k) plays participant k: base partition
`partition` of `num_partitions` plus the train side of the feedback store at
`feedback_path`, which it reads itself. The manifest says where each device's data is; it
never carries the data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from edgeops.errors import ConfigError, PayloadError

__all__ = [
    "EVAL_ONE_IN",
    "FeedbackSplit",
    "SPLITS",
    "feedback_split",
    "CONFIG_PREFIX",
    "ClientRecipe",
    "Participant",
    "Participants",
    "parse_participants",
    "read_participants",
]

CONFIG_PREFIX = "edgeops."


@dataclass(frozen=True)
class ClientRecipe:
    """How a client trains and evaluates in one round."""

    task: str = "digits"
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    proximal_mu: float = 0.0
    # Simulated devices cut their local data from the task's dataset: alpha <= 0 means IID.
    alpha: float = 0.0
    partition_seed: int = 0
    # Append the local feature-histogram frequencies to the fit reply (drift reference).
    histogram: bool = True
    server_round: int = 0
    # Fault injection for tests and demos: these partitions fail every fit (a dropout).
    drop_partitions: str = ""
    # Simulation: the participants manifest saying which device partition-id k plays.
    participants_file: str = ""
    # Evaluate on the device's feedback eval split and reply with per-class counts
    # (`correct_<c>`, `total_<c>`, `cohort_index`) instead of the local held-out rows.
    fleet_evaluation: bool = False

    def to_config(self) -> dict[str, Any]:
        return {CONFIG_PREFIX + name: value for name, value in asdict(self).items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClientRecipe:
        """Read a recipe from a fit/evaluate config; PayloadError if a value has the wrong type."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            key = CONFIG_PREFIX + spec.name
            if key not in config:
                continue
            raw = config[key]
            default = getattr(cls, spec.name)
            try:
                values[spec.name] = _coerce(raw, type(default))
            except (TypeError, ValueError) as err:
                raise PayloadError(f"config {key}={raw!r} is not a {type(default).__name__}") from err
        return cls(**values)

    def dropped(self, partition_id: int) -> bool:
        return str(partition_id) in {p.strip() for p in self.drop_partitions.split(",") if p.strip()}


# The feedback split: an example is always on the same side, whichever device, process or
# run reads it, so the fleet evaluation never scores a model on rows it was trained on.
EVAL_ONE_IN = 5
FeedbackSplit = Literal["train", "eval"]
SPLITS: tuple[FeedbackSplit, ...] = ("train", "eval")


def feedback_split(prediction_id: str) -> FeedbackSplit:
    """The side of the split `prediction_id` is on: "eval" for 1 in EVAL_ONE_IN ids (by the
    first 8 bytes of their sha256), "train" for the rest. Pure and stable across runs."""
    digest = hashlib.sha256(prediction_id.encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % EVAL_ONE_IN == 0 else "train"


@dataclass(frozen=True)
class Participant:
    """One device taking part: who it is, its cohort, its base partition, its feedback file."""

    device_id: str
    cohort: str
    partition: int
    feedback_path: str

    def __post_init__(self) -> None:
        if not self.device_id or not self.cohort:
            raise ConfigError("a participant needs a non-empty device_id and cohort")
        if self.partition < 0:
            raise ConfigError(f"participant {self.device_id}: partition must be >= 0")


@dataclass(frozen=True)
class Participants:
    """The ordered participants and the number of base partitions they are cut from."""

    num_partitions: int
    participants: tuple[Participant, ...]
    # Only feedback labelled up to this epoch time takes part (None: all of it): every round
    # and the fleet evaluation then see the same rows while devices keep labelling.
    feedback_until: float | None = None

    def __post_init__(self) -> None:
        if self.num_partitions < 1:
            raise ConfigError(f"num_partitions must be >= 1, got {self.num_partitions}")
        if not self.participants:
            raise ConfigError("a participants manifest needs at least one participant")
        outside = [p.device_id for p in self.participants if p.partition >= self.num_partitions]
        if outside:
            raise ConfigError(
                f"participants {outside} have a partition outside 0..{self.num_partitions - 1}"
            )
        ids = [p.device_id for p in self.participants]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ConfigError(f"devices {repeated} are listed more than once")

    def __len__(self) -> int:
        return len(self.participants)

    @property
    def cohorts(self) -> tuple[str, ...]:
        """The distinct cohorts, sorted: a participant's cohort index points into this."""
        return tuple(sorted({p.cohort for p in self.participants}))

    def cohort_index(self, index: int) -> int:
        return self.cohorts.index(self.at(index).cohort)

    def at(self, index: int) -> Participant:
        """Participant `index` (the simulated node's partition-id)."""
        if not 0 <= index < len(self.participants):
            raise ConfigError(
                f"partition-id {index} has no participant (the manifest lists "
                f"{len(self.participants)})"
            )
        return self.participants[index]

    def to_json(self) -> dict[str, Any]:
        return {
            "num_partitions": self.num_partitions,
            "participants": [asdict(p) for p in self.participants],
            "feedback_until": self.feedback_until,
        }


def read_participants(path: Path | str) -> Participants:
    """Read a manifest file; ConfigError naming the file and the bad field otherwise."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"participants file {str(path)!r} does not exist") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"participants file {str(path)!r} is not readable JSON: {err}") from err
    try:
        return parse_participants(raw)
    except ConfigError as err:
        raise ConfigError(f"participants file {str(path)!r}: {err}") from err


def parse_participants(raw: object) -> Participants:
    """A manifest from its decoded JSON; ConfigError naming the bad field."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the manifest must be a JSON object")
    unknown = set(raw) - {"num_partitions", "participants", "feedback_until"}
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)}")
    num_partitions = _field(raw, "num_partitions", int, "the manifest")
    entries = raw.get("participants")
    if not isinstance(entries, list):
        raise ConfigError("'participants' must be a list")
    until = raw.get("feedback_until")
    if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
        raise ConfigError(f"'feedback_until' must be a number (epoch seconds) or null, got {until!r}")
    return Participants(
        num_partitions=num_partitions,
        participants=tuple(_participant(entry, i) for i, entry in enumerate(entries)),
        feedback_until=float(until) if until is not None else None,
    )


def _participant(entry: object, index: int) -> Participant:
    where = f"participant {index}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a JSON object")
    expected = {"device_id", "cohort", "partition", "feedback_path"}
    unknown = set(entry) - expected
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}")
    return Participant(
        device_id=_field(entry, "device_id", str, where),
        cohort=_field(entry, "cohort", str, where),
        partition=_field(entry, "partition", int, where),
        feedback_path=_field(entry, "feedback_path", str, where),
    )


_KINDS = {int: "an integer", str: "a string"}


def _field(data: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in data:
        raise ConfigError(f"{where} has no {name!r}")
    value = data[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {name!r} must be {_KINDS[kind]}, got {value!r}")
    return value


def _coerce(raw: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)):
            return bool(raw)
        raise TypeError(kind)
    if kind is int and isinstance(raw, float) and not raw.is_integer():
        raise ValueError(raw)
    return kind(raw)
