"""What a drift does to a device's digits (8x8 pixels in [0, 1]): pure functions of the inputs.

    offset        a stuck sensor bias of `amount` on every pixel (clipped to [0, 1])
    shift         the image moves `amount` pixels right (a misaligned camera)
    noise         Gaussian noise of standard deviation `amount` (clipped)
    blur          a Gaussian blur of sigma `amount` pixels
    rotate        the image turned by `amount` degrees
    out_of_range  `amount` of the pixels read 3.0, beyond the sensor's range

Two drifts change what devices see rather than how they see it, and live in the traffic
(simulations/agent_host.py): `prior` (a share `amount` of the traffic comes from classes 0-4
only) and `concept` (a share `amount` of the true labels move to the next class).
`drift_inputs` leaves inputs unchanged for them. The amounts are docs/scenarios.md's.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgeops.errors import ConfigError

__all__ = ["DRIFTS", "INPUT_DRIFTS", "drift_inputs"]

INPUT_DRIFTS = ("offset", "shift", "noise", "blur", "rotate", "out_of_range")
DRIFTS = ("none", *INPUT_DRIFTS, "prior", "concept")
_SIDE = 8


def drift_inputs(x: NDArray[np.float32], kind: str, amount: float,
                 seed: int = 0) -> NDArray[np.float32]:
    """`x` (n, 64) as a drifted sensor sees it (see the module docstring)."""
    if kind in ("none", "prior", "concept"):
        return x
    images = np.asarray(x, dtype=np.float32).reshape(-1, _SIDE, _SIDE)
    if kind == "offset":
        out = np.clip(images + np.float32(amount), 0.0, 1.0)
    elif kind == "shift":
        px = max(1, int(amount))
        out = np.zeros_like(images)
        out[:, :, px:] = images[:, :, :-px]
    elif kind == "noise":
        rng = np.random.default_rng(seed)
        out = np.clip(images + rng.normal(0.0, amount, images.shape).astype(np.float32), 0, 1)
    elif kind == "blur":
        from scipy.ndimage import gaussian_filter

        out = gaussian_filter(images, sigma=(0, amount, amount), mode="nearest")
    elif kind == "rotate":
        from scipy.ndimage import rotate

        out = np.clip(rotate(images, amount, axes=(1, 2), reshape=False, order=1), 0, 1)
    elif kind == "out_of_range":
        rng = np.random.default_rng(seed)
        out = np.where(rng.random(images.shape) < amount, np.float32(3.0), images)
    else:
        raise ConfigError(f"unknown drift {kind!r} (expected one of {', '.join(DRIFTS)})")
    return np.ascontiguousarray(out, dtype=np.float32).reshape(np.shape(x))
