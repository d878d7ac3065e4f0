"""How a fleet's feature histograms travel through federated averaging and come out summed.

A client appends the *frequencies* of its local histogram (counts / local examples, every
value in [0, 1]) as one extra array after its model weights. Federated averaging weighs
each reply by its number of examples, so the server receives

    sum_i n_i * (h_i / n_i) / sum_i n_i  =  sum_i h_i / N

which, multiplied by N = sum_i n_i (known from the replies), is exactly the summed counts.
Under SecAgg+ the server only ever sees that weighted mean, never one client's histogram;
frequencies stay inside SecAgg+'s clipping range and its quantization error (~1e-6 of a
frequency) is far below the 0.5 that rounding to whole counts forgives.

Pure numpy: the agent's federated module and the server's ServerApp both use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edgeops.errors import PayloadError
from edgeops.sketches import feature_histograms

__all__ = ["local_frequencies", "summed_counts"]


def local_frequencies(features: ArrayLike, bin_edges: ArrayLike) -> NDArray[np.float64]:
    """A client's histogram (features x bins) divided by its number of examples."""
    x = np.asarray(features)
    if len(x) == 0:
        raise PayloadError("cannot build a histogram of zero examples")
    counts = feature_histograms(x, bin_edges)
    return counts.astype(np.float64) / float(len(x))


def summed_counts(
    weighted_frequencies: Sequence[tuple[ArrayLike, int]],
) -> NDArray[np.int64]:
    """The fleet's summed counts from (frequencies, num_examples) replies.

    Plain FedAvg hands over each client's own frequencies; SecAgg+ hands every reply the
    same weighted mean. sum_i f_i * n_i is the summed counts in both cases.
    """
    if not weighted_frequencies:
        raise PayloadError("no histogram replies to sum")
    total: NDArray[np.float64] | None = None
    for frequencies, num_examples in weighted_frequencies:
        part = np.asarray(frequencies, dtype=np.float64) * float(num_examples)
        if total is not None and part.shape != total.shape:
            raise PayloadError(f"histogram shapes differ: {part.shape} vs {total.shape}")
        total = part if total is None else total + part
    assert total is not None
    return np.rint(total).astype(np.int64)
