"""Shared by the packaging tests: one digits model trained once per test process."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

# Fewer epochs than the task default (30): the digits MLP is already ~97% accurate at 10,
# which is all the packaging tests need, at a third of the training time.
TEST_EPOCHS = 10


@cache
def digits_checkpoint_bytes(epochs: int = TEST_EPOCHS, seed: int = 0) -> bytes:
    """A torch.save()d state_dict of the digits model, trained with the task's recipe."""
    import torch

    from edgeops.packaging import train_model
    from edgeops.tasks import TrainConfig, load_task

    task = load_task("digits")
    source = train_model(task, task.load_data(), TrainConfig(epochs=epochs, seed=seed))
    buffer = io.BytesIO()
    torch.save(source.model.state_dict(), buffer)
    return buffer.getvalue()


def write_digits_checkpoint(path: Path) -> Path:
    path.write_bytes(digits_checkpoint_bytes())
    return path
