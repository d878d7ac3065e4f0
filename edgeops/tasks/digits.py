"""Built-in task `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images).

Pixels 0..16 are scaled to [0, 1]; the held-out split is fixed (25%, stratified, seed 0).
The model is an MLP 64-512-256-10 (167,178 parameters).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from edgeops.errors import TaskError
from edgeops.schemas import InputSchema
from edgeops.tasks.base import Dataset, Task
from edgeops.tasks.torch_classification import evaluate_classifier, train_classifier

if TYPE_CHECKING:  # pragma: no cover
    import torch

NUM_FEATURES = 64
NUM_CLASSES = 10
TEST_FRACTION = 0.25
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def load_digits_dataset() -> Dataset:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the install
        raise TaskError(
            "the digits task needs scikit-learn: pip install 'edgeops[server]'"
        ) from err
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    for array in (x_train, x_test, y_train, y_test):
        array.setflags(write=False)
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def make_digits_model() -> torch.nn.Module:
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(NUM_FEATURES, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, NUM_CLASSES),
    )


digits = Task(
    name="digits",
    description="scikit-learn handwritten digits, 8x8 pixels scaled to [0, 1], 10 classes",
    input_schema=InputSchema(
        name="input",
        shape=[None, NUM_FEATURES],
        min_value=0.0,
        max_value=1.0,
        feature_bin_edges=[float(v) for v in np.linspace(0.0, 1.0, 11)],
    ),
    num_classes=NUM_CLASSES,
    load_data=load_digits_dataset,
    make_model=make_digits_model,
    train=train_classifier,
    evaluate=evaluate_classifier,
)
