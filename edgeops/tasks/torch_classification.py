"""Train and evaluate functions for classifiers in torch, shared by the built-in tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from edgeops.tasks.base import TrainConfig, TrainResult

if TYPE_CHECKING:  # pragma: no cover
    import torch


def train_classifier(
    model: torch.nn.Module, x: NDArray, y: NDArray, config: TrainConfig
) -> TrainResult:
    """Plain minibatch Adam on cross-entropy; deterministic for a given seed."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(model, x, y, config)
    finally:
        torch.set_num_threads(threads_before)


def _train(model: torch.nn.Module, x: NDArray, y: NDArray, config: TrainConfig) -> TrainResult:
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    # Copies: datasets are read-only arrays, which torch warns about when it shares them.
    features = torch.tensor(x, dtype=torch.float32).reshape(len(x), -1)
    labels = torch.tensor(y, dtype=torch.int64)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    anchor = (
        [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else None
    )
    model.train()
    last_epoch_loss = 0.0
    for _ in range(config.epochs):
        order = torch.randperm(len(features), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(features[batch]), labels[batch])
            if anchor is not None:
                loss = loss + _proximal_term(model, anchor, config.proximal_mu)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        last_epoch_loss = total / max(seen, 1)
    model.eval()
    return TrainResult(loss=last_epoch_loss, num_examples=len(features))


def _proximal_term(
    model: torch.nn.Module, anchor: list[torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's mu/2 * ||w - w_start||^2 over every parameter."""
    squared = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
    return 0.5 * mu * squared  # type: ignore[return-value]


def evaluate_classifier(model: torch.nn.Module, x: NDArray, y: NDArray) -> dict[str, float]:
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(x, dtype=torch.float32).reshape(len(x), -1))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y, dtype=torch.int64))
    predictions = logits.argmax(dim=1).numpy()
    return {"loss": float(loss), "accuracy": float(np.mean(predictions == np.asarray(y)))}
