"""What a federated training run is asked to do: task, fleet, rounds, strategy, SecAgg+, DP,
where it starts from (warm start) and, in simulation, which devices take part.

Frozen dataclasses, checked when built. `to_json()` is what the registry records with the
run; `run_config()` / `from_run_config()` carry it through Flower's flat run config
(`flwr run --run-config`, `[tool.flwr.app.config]`). The files a config names (warm-start
weights, participants manifest) are checked when it is built, so a bad path fails before
any engine starts; whether the weights fit the task's model is checked when the run starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgeops.errors import ConfigError
from edgeops.federated.config import read_participants

__all__ = [
    "STRATEGIES",
    "DPConfig",
    "FederatedConfig",
    "SecAggConfig",
    "StrategyConfig",
    "StrategyName",
]

StrategyName = Literal["fedavg", "fedprox", "fedadam"]
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedadam")


@dataclass(frozen=True)
class StrategyConfig:
    """The server's aggregation rule and its parameters.

    fedprox: clients add proximal_mu/2 * ||w - w_global||^2 to their loss.
    fedadam: the server applies Adam to the averaged update (server_learning_rate = eta,
    beta_1, beta_2, tau = the adaptivity epsilon).
    """

    name: StrategyName = "fedavg"
    proximal_mu: float = 0.01
    server_learning_rate: float = 1e-2
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.name!r}")
        if self.proximal_mu < 0 or self.server_learning_rate <= 0 or self.tau <= 0:
            raise ConfigError("proximal_mu must be >= 0; server_learning_rate and tau > 0")


@dataclass(frozen=True)
class SecAggConfig:
    """Flower's SecAgg+ (`SecAggPlusWorkflow`) parameters.

    num_shares: neighbours each client secret-shares its keys with (an int > 2, or a float
    fraction of the sampled clients); reconstruction_threshold: shares needed to unmask
    (int < num_shares, or a float fraction of num_shares). A round survives as long as every
    client keeps at least `threshold` live neighbours. max_weight caps a client's weight
    (its number of examples); None: the largest local dataset, known in simulation.
    """

    num_shares: int | float = 5
    reconstruction_threshold: int | float = 3
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    max_weight: float | None = None
    timeout_s: float | None = 120.0

    def __post_init__(self) -> None:
        if isinstance(self.num_shares, int) and self.num_shares <= 2 and self.num_shares != 1:
            raise ConfigError(f"num_shares must be > 2 (or a fraction), got {self.num_shares}")
        if (
            isinstance(self.num_shares, int)
            and isinstance(self.reconstruction_threshold, int)
            and self.num_shares > 1
            and not 1 <= self.reconstruction_threshold < self.num_shares
        ):
            raise ConfigError(
                f"reconstruction_threshold must be in 1..num_shares-1, got "
                f"{self.reconstruction_threshold} with num_shares={self.num_shares}"
            )
        if self.clipping_range <= 0:
            raise ConfigError(f"clipping_range must be > 0, got {self.clipping_range}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"the SecAgg+ stage timeout must be > 0 s, got {self.timeout_s}")

    def resolved(self, num_sampled: int, largest_local_examples: int | None) -> SecAggConfig:
        """Shares never exceed the sampled clients; max_weight covers every local dataset."""
        shares = self.num_shares
        threshold = self.reconstruction_threshold
        if isinstance(shares, int) and shares > num_sampled:
            # Everyone is everyone's neighbour: Flower's float form for "all clients".
            shares, threshold = 1.0, _as_fraction(threshold, self.num_shares)
        max_weight = self.max_weight
        if max_weight is None:
            max_weight = float(max(largest_local_examples or 1000, 1))
        return replace(self, num_shares=shares, reconstruction_threshold=threshold, max_weight=max_weight)


def _as_fraction(threshold: int | float, shares: int | float) -> float:
    if isinstance(threshold, float):
        return threshold
    return min(1.0, threshold / float(shares))


@dataclass(frozen=True)
class DPConfig:
    """Central DP with client-side fixed clipping (Flower's
    DifferentialPrivacyClientSideFixedClipping + fixedclipping_mod): each client clips its
    update to `clipping_norm`; the server adds Gaussian noise of standard deviation
    noise_multiplier * clipping_norm / sampled clients to the aggregate. `delta` is the
    delta the run's epsilon is stated at (server.federated.privacy)."""

    noise_multiplier: float
    clipping_norm: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.clipping_norm <= 0:
            raise ConfigError("DP needs noise_multiplier >= 0 and clipping_norm > 0")
        if not 0 < self.delta < 1:
            raise ConfigError(f"DP delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class FederatedConfig:
    task: str = "digits"
    num_clients: int = 10
    num_rounds: int = 5
    fraction_fit: float = 1.0
    fraction_evaluate: float = 1.0
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    alpha: float | None = None  # None: IID local data; else Dirichlet(alpha) non-IID
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    secagg: SecAggConfig | None = field(default_factory=SecAggConfig)
    dp: DPConfig | None = None
    drift_histogram: bool = True
    drop_partitions: tuple[int, ...] = ()  # fault injection: these clients fail every fit
    # Warm start: a torch state_dict file of the task's model (a run's weights artifact);
    # None starts from freshly initialised weights.
    initial_weights: str | None = None
    # Simulation: the participants manifest; num_clients must equal its participants.
    participants_file: str | None = None
    # After the rounds, evaluate candidate (and warm-start champion) weights on every
    # participant's feedback eval split, per class and per cohort (needs participants_file).
    fleet_evaluation: bool = False

    def __post_init__(self) -> None:
        if self.num_clients < 1 or self.num_rounds < 1:
            raise ConfigError("a run needs at least 1 client and 1 round")
        if self.secagg is not None and self.num_clients < 3:
            raise ConfigError("SecAgg+ needs at least 3 clients; use --no-secagg for fewer")
        if not 0 < self.fraction_fit <= 1 or not 0 <= self.fraction_evaluate <= 1:
            raise ConfigError("fraction_fit must be in (0, 1] and fraction_evaluate in [0, 1]")
        if self.local_epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError("local epochs, batch size and learning rate must be positive")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        bad = [p for p in self.drop_partitions if not 0 <= p < self.num_clients]
        if bad:
            raise ConfigError(f"drop_partitions {bad} are not clients 0..{self.num_clients - 1}")
        self._check_files()

    def _check_files(self) -> None:
        if self.initial_weights is not None and not Path(self.initial_weights).is_file():
            raise ConfigError(
                f"initial_weights {self.initial_weights!r} is not a file (a torch state_dict)"
            )
        if self.fleet_evaluation and self.participants_file is None:
            raise ConfigError("fleet_evaluation needs a participants_file (who to evaluate)")
        if self.participants_file is not None:
            count = len(read_participants(self.participants_file))
            if count != self.num_clients:
                raise ConfigError(
                    f"num_clients is {self.num_clients} but the participants file "
                    f"{self.participants_file!r} lists {count} participants"
                )

    @property
    def num_sampled_fit(self) -> int:
        return max(1, int(self.num_clients * self.fraction_fit))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["drop_partitions"] = list(self.drop_partitions)
        return data

    def run_config(self) -> dict[str, Any]:
        """Flower's flat run config (scalars only); None values are left out."""
        flat: dict[str, Any] = {}
        for key, value in _flatten(self.to_json()).items():
            if value is None:
                continue
            flat[key] = ",".join(str(v) for v in value) if isinstance(value, list) else value
        if self.secagg is None:
            flat["secagg.enabled"] = False
        return flat

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederatedConfig:
        """Rebuild from `[tool.flwr.app.config]` keys (`num-rounds`, `secagg.num-shares`,
        `strategy.name`, `dp.noise-multiplier`, ...); missing keys keep their defaults.
        `secagg.enabled = false` turns SecAgg+ off; DP is on when dp.noise-multiplier and
        dp.clipping-norm are both given (dp.delta is optional)."""
        values = {str(k).replace("-", "_"): v for k, v in run_config.items()}
        try:
            strategy = StrategyConfig(**_section(values, "strategy", StrategyConfig))
            secagg: SecAggConfig | None = SecAggConfig(**_section(values, "secagg", SecAggConfig))
            if not values.get("secagg.enabled", True):
                secagg = None
            dp_values = _section(values, "dp", DPConfig)
            required = {"noise_multiplier", "clipping_norm"}
            dp = DPConfig(**dp_values) if required <= dp_values.keys() else None
            top = {k: v for k, v in values.items() if "." not in k and k in _names(cls)}
            if "drop_partitions" in top:
                top["drop_partitions"] = tuple(
                    int(p) for p in str(top["drop_partitions"]).split(",") if p.strip()
                )
            if "alpha" in top and float(top["alpha"]) <= 0:
                top["alpha"] = None
            for name in ("initial_weights", "participants_file"):
                if name in top and not str(top[name]):
                    top[name] = None
            return cls(**top, strategy=strategy, secagg=secagg, dp=dp)
        except TypeError as err:
            raise ConfigError(f"bad federated run config: {err}") from err


def _names(cls: type) -> set[str]:
    return set(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def _section(values: Mapping[str, Any], prefix: str, cls: type) -> dict[str, Any]:
    names = _names(cls)
    return {
        key.split(".", 1)[1]: value
        for key, value in values.items()
        if key.startswith(prefix + ".") and key.split(".", 1)[1] in names
    }


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key.replace('_', '-')}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
