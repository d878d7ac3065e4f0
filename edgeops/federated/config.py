"""What the ServerApp tells each ClientApp in every round, as Flower's flat config record.

The server owns the training recipe (task, local epochs, learning rate, FedProx mu, how the
simulation partitions data); devices own their data. One dataclass, two directions:
`to_config()` on the server, `from_config()` on the device, so both sides agree on names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeops.errors import PayloadError

__all__ = ["CONFIG_PREFIX", "ClientRecipe"]

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
