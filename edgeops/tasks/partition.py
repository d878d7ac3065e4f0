"""Deterministic partitioners that give every simulated device its own local data."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edgeops.errors import ConfigError


def partition_iid(num_samples: int, num_clients: int, seed: int = 0) -> list[NDArray[np.int64]]:
    """Shuffle the indices and deal them into `num_clients` near-equal parts."""
    _check(num_samples, num_clients)
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def partition_dirichlet(
    labels: ArrayLike, num_clients: int, alpha: float, seed: int = 0, min_per_client: int = 1
) -> list[NDArray[np.int64]]:
    """Non-IID split: each class is spread over clients by proportions ~ Dirichlet(alpha).

    Small `alpha` gives each client few classes; large `alpha` approaches IID. Draws are
    repeated (deterministically) until every client has at least `min_per_client` samples.
    """
    y = np.asarray(labels)
    _check(len(y), num_clients)
    if alpha <= 0:
        raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}")
    if num_clients * min_per_client > len(y):
        raise ConfigError(f"{len(y)} samples cannot give {num_clients} clients {min_per_client} each")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(y == cls))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_per_client:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"could not give {num_clients} clients {min_per_client} samples each with alpha={alpha}; "
        "raise alpha or lower the number of clients"
    )


def _check(num_samples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"need at least one client, got {num_clients}")
    if num_samples < num_clients:
        raise ConfigError(f"{num_samples} samples cannot be split over {num_clients} clients")


def partition_devices(
    labels: ArrayLike, num_clients: int, alpha: float | None, seed: int = 0
) -> list[NDArray[np.int64]]:
    """How simulated devices get their local data: IID when `alpha` is None or <= 0, else
    Dirichlet(alpha) non-IID. Federated training, evaluation and the simulation's devices
    all cut their data with this one function (train and held-out splits alike)."""
    if alpha is None or alpha <= 0:
        return partition_iid(len(np.asarray(labels)), num_clients, seed=seed)
    return partition_dirichlet(labels, num_clients, alpha, seed=seed)
