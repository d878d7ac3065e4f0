"""Where the model to package comes from: trained now with the task's recipe, or loaded
from a torch `state_dict` checkpoint that must fit the task's model exactly."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgeops.errors import ConfigError
from edgeops.tasks.base import Dataset, Task, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceModel:
    """A torch model in eval mode, and how it came to be."""

    model: torch.nn.Module
    origin: Literal["trained", "checkpoint"]
    train_config: TrainConfig | None = None
    train_loss: float | None = None
    checkpoint_sha256: str | None = None


def train_model(task: Task, dataset: Dataset, config: TrainConfig) -> SourceModel:
    """Build the task's model and train it on the training split.

    Weight initialisation is seeded with `config.seed` too, so the same config gives the
    same model; the caller's torch RNG state is left as it was.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = task.make_model()
        result = task.train(model, dataset.x_train, dataset.y_train, config)
    model.eval()
    logger.info(
        "trained %s: %d examples, final loss %.4f", task.name, result.num_examples, result.loss
    )
    return SourceModel(
        model=model, origin="trained", train_config=config, train_loss=float(result.loss)
    )


def check_checkpoint_path(path: Path) -> Path:
    """Refuse a checkpoint path that is not a readable file, before any work is done."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} is not a file")
    return path


def load_checkpoint(task: Task, path: Path) -> SourceModel:
    """Load a torch `state_dict` (or `{"state_dict": ...}`) into a fresh task model.

    Raises ConfigError naming the file when it is missing, is not a torch checkpoint, or
    does not fit the task's model (missing, unexpected or mis-shaped tensors).
    """
    import torch

    path = check_checkpoint_path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/pickle raise many types for a bad file
        raise ConfigError(
            f"checkpoint {str(path)!r} is not a readable torch state_dict file: {err}"
        ) from err
    state = _state_dict(loaded, path)
    model = task.make_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"checkpoint {str(path)!r} does not fit the {task.name!r} model: {err}"
        ) from err
    model.eval()
    return SourceModel(model=model, origin="checkpoint", checkpoint_sha256=file_sha256(path))


def _state_dict(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    import torch

    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise ConfigError(
            f"checkpoint {str(path)!r} holds a {type(loaded).__name__}, not a state_dict "
            "(a mapping of parameter names to tensors, as saved by torch.save(model.state_dict()))"
        )
    return loaded


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
