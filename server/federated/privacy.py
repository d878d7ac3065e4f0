"""The (epsilon, delta) a DP federated run spends, from Google's `dp-accounting` RDP accountant.

    epsilon(noise_multiplier=1.0, sampling_rate=0.2, rounds=10, delta=1e-5)   # -> float
    noise_for_epsilon(3.0, sampling_rate=0.2, rounds=10, delta=1e-5)          # -> float
    spent(dp_config, sampling_rate, rounds)                                   # -> record

Each round is one Gaussian mechanism on the clipped sum of the sampled clients' updates
(sensitivity = clipping_norm, noise stddev = noise_multiplier * clipping_norm: Flower's
DifferentialPrivacyClientSideFixedClipping divides both by the sampled clients), applied to
a Poisson sample of clients with rate `sampling_rate`, composed over `rounds`: user-level
DP. Flower samples a fixed number of clients without replacement, so with sampling_rate < 1
the Poisson amplification is the usual approximation (DP-FedAvg, McMahan et al. 2018); with
sampling_rate = 1 (every client every round) there is no amplification and it is exact.
"""

from __future__ import annotations

import math
from importlib.metadata import version
from typing import Any

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

from edgeops.errors import ConfigError

__all__ = ["ACCOUNTANT", "epsilon", "noise_for_epsilon", "spent"]

ACCOUNTANT = f"dp-accounting {version('dp-accounting')} RdpAccountant (Poisson-sampled Gaussian)"
# Bisection bounds for noise_for_epsilon: noise multipliers this far apart bracket every
# epsilon a run asks for (at 1e3 one round of the whole fleet costs epsilon ~ 0.005).
_NOISE_LOW, _NOISE_HIGH, _NOISE_TOLERANCE = 1e-3, 1e3, 1e-4


def _check(sampling_rate: float, rounds: int, delta: float) -> None:
    if not 0 < sampling_rate <= 1:
        raise ConfigError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The epsilon of `rounds` Poisson-sampled Gaussian rounds at `delta`; inf without noise.

    ConfigError for a negative noise multiplier, sampling_rate outside (0, 1], rounds < 1 or
    delta outside (0, 1)."""
    if noise_multiplier < 0:
        raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    _check(sampling_rate, rounds, delta)
    if noise_multiplier == 0:
        return math.inf
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        rounds,
    )
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(
    target_epsilon: float, sampling_rate: float, rounds: int, delta: float
) -> float:
    """The smallest noise multiplier (within 1e-4) whose epsilon is <= target_epsilon.

    ConfigError for target_epsilon <= 0, the inputs `epsilon` rejects, or a target no noise
    multiplier up to 1e3 reaches."""
    if not target_epsilon > 0:
        raise ConfigError(f"target_epsilon must be > 0, got {target_epsilon}")
    _check(sampling_rate, rounds, delta)
    low, high = _NOISE_LOW, _NOISE_HIGH
    if epsilon(high, sampling_rate, rounds, delta) > target_epsilon:
        raise ConfigError(
            f"epsilon {target_epsilon} is out of reach over {rounds} rounds at sampling rate "
            f"{sampling_rate} (noise multiplier {high} spends more)"
        )
    if epsilon(low, sampling_rate, rounds, delta) <= target_epsilon:
        return low
    while high - low > _NOISE_TOLERANCE:
        middle = (low + high) / 2
        if epsilon(middle, sampling_rate, rounds, delta) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high


def spent(
    noise_multiplier: float, delta: float, sampling_rate: float, rounds: int
) -> dict[str, Any]:
    """What a run records of its privacy budget: (epsilon, delta) and where they came from.

    `rounds` counts every round that ran (conservative: a halted round is charged too);
    epsilon is None (JSON has no infinity) when there is no noise."""
    value = epsilon(noise_multiplier, sampling_rate, rounds, delta)
    return {
        "epsilon": round(value, 4) if math.isfinite(value) else None,
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "sampling_rate": sampling_rate,
        "rounds": rounds,
        "unit": "user-level (one client's whole local dataset)",
        "accountant": ACCOUNTANT,
    }
