"""What a task is: data, input schema, a model factory, and how to train and evaluate it.

A task is plain data plus functions, so a user task is any object of this shape reachable
as `module:attribute`. Torch is imported only inside the functions that need it, so the
agent can import task metadata without loading torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edgeops.schemas import InputSchema

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class Dataset:
    """A task's data with its fixed held-out split. Features are float32, labels int64."""

    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]

    def fingerprint(self) -> str:
        """sha256 over the training and test arrays: the data lineage of a model."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    # One thread: small models train faster on one core than two, and torch's threads
    # spin badly when other processes share the machine (30x slower measured on 2 cores).
    num_threads: int = 1
    # FedProx: mu/2 * ||w - w_start||^2 keeps local training near the global model it
    # started from. 0 is plain local training. Task train functions should honour it.
    proximal_mu: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    loss: float
    num_examples: int


@dataclass(frozen=True)
class Task:
    name: str
    input_schema: InputSchema
    num_classes: int
    load_data: Callable[[], Dataset]
    make_model: Callable[[], torch.nn.Module]
    train: Callable[[torch.nn.Module, NDArray, NDArray, TrainConfig], TrainResult]
    evaluate: Callable[[torch.nn.Module, NDArray, NDArray], dict[str, float]]
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def calibration_data(self, dataset: Dataset, max_samples: int = 256) -> NDArray[np.float32]:
        """Representative inputs for static int8 quantization: the first training samples."""
        return dataset.x_train[:max_samples]
