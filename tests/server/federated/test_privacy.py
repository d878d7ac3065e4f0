"""Privacy you can state (issue 19 item 6): the (epsilon, delta) of a DP run from the
dp-accounting RDP accountant, its inverse, bad inputs, and a real DP run that records its
epsilon in the training run and in the release's model card."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import dp_accounting
import pytest
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError
from server.config.settings import ServerSettings
from server.federated.config import DPConfig, FederatedConfig
from server.federated.privacy import ACCOUNTANT, epsilon, noise_for_epsilon, spent
from server.federated.runs import TrainingRuns
from server.governance.model_card import signed_part
from server.pipeline.publishing import publish_package
from server.registry.artifact_store import ArtifactStore
from tests.server.federated.support import run_local
from tests.server.helpers import make_package

DELTA = 1e-5


def test_epsilon_of_the_dp_sgd_mnist_example_is_within_the_published_bound() -> None:
    # Abadi et al. 2016 / TF Privacy's tutorial: q = 256/60000, sigma 1.1, 60 epochs (14063
    # steps), delta 1e-5 -> epsilon 2.92 with the older RDP-to-DP conversion; dp-accounting's
    # tighter conversion (Balle et al. 2020) can only lower it, not by much.
    steps = math.ceil(60 * 60000 / 256)
    assert 2.4 < epsilon(1.1, 256 / 60000, steps, DELTA) <= 2.92


def _gaussian_delta(eps: float, mu: float) -> float:
    """Exact delta(eps) of a Gaussian mechanism with sensitivity / sigma = mu (Balle & Wang 2018)."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)


@pytest.mark.parametrize(("noise", "rounds"), [(1.0, 10), (4.0, 50), (0.7, 1)])
def test_without_sampling_epsilon_lies_between_the_exact_gaussian_and_the_classic_rdp_bound(
    noise: float, rounds: int
) -> None:
    # T full-participation rounds = one Gaussian with mu = sqrt(T) / sigma. The exact
    # epsilon (analytic Gaussian) is a floor for any accountant; the classic RDP conversion
    # min over alpha of alpha*T/(2 sigma^2) + log(1/delta)/(alpha-1) is a ceiling.
    mu = math.sqrt(rounds) / noise
    low, high = 0.0, 100.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if _gaussian_delta(middle, mu) > DELTA else (low, middle)
    ceiling = min(a * rounds / (2 * noise**2) + math.log(1 / DELTA) / (a - 1)
                  for a in [1 + i / 100 for i in range(1, 20000)])
    value = epsilon(noise, 1.0, rounds, DELTA)
    assert high * 0.999 <= value <= ceiling * 1.001
    assert value < 1.25 * high  # and it is not loose


def test_without_sampling_it_is_the_composed_gaussian_mechanism() -> None:
    # Every client every round: T Gaussian rounds = one Gaussian of sigma / sqrt(T).
    composed = epsilon(2.0, 1.0, 16, DELTA)
    single = epsilon(2.0 / 4, 1.0, 1, DELTA)
    assert composed == pytest.approx(single, rel=1e-6)
    assert 0 < composed < math.inf


def test_more_noise_spends_less_and_more_rounds_or_sampling_spend_more() -> None:
    by_noise = [epsilon(z, 0.2, 10, DELTA) for z in (0.5, 1.0, 2.0, 4.0)]
    by_rounds = [epsilon(1.0, 0.2, t, DELTA) for t in (1, 10, 100)]
    by_rate = [epsilon(1.0, q, 10, DELTA) for q in (0.05, 0.2, 1.0)]
    by_delta = [epsilon(1.0, 0.2, 10, d) for d in (1e-3, 1e-5, 1e-7)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 3
    assert by_rate == sorted(by_rate) and len(set(by_rate)) == 3
    assert by_delta == sorted(by_delta) and len(set(by_delta)) == 3


def test_no_noise_is_no_privacy() -> None:
    assert epsilon(0.0, 0.5, 3, DELTA) == math.inf
    assert spent(0.0, DELTA, 0.5, 3)["epsilon"] is None


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_noise_for_epsilon_is_the_smallest_noise_within_the_target(target: float) -> None:
    noise = noise_for_epsilon(target, 0.2, 10, DELTA)
    assert epsilon(noise, 0.2, 10, DELTA) <= target
    assert epsilon(noise - 1e-3, 0.2, 10, DELTA) > target


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: epsilon(-0.1, 0.2, 10, DELTA), "noise_multiplier must be >= 0"),
        (lambda: epsilon(1.0, 0.0, 10, DELTA), r"sampling_rate must be in \(0, 1\]"),
        (lambda: epsilon(1.0, 1.5, 10, DELTA), r"sampling_rate must be in \(0, 1\]"),
        (lambda: epsilon(1.0, 0.2, 0, DELTA), "rounds must be >= 1"),
        (lambda: epsilon(1.0, 0.2, 10, 0.0), r"delta must be in \(0, 1\)"),
        (lambda: epsilon(1.0, 0.2, 10, 1.0), r"delta must be in \(0, 1\)"),
        (lambda: noise_for_epsilon(0.0, 0.2, 10, DELTA), "target_epsilon must be > 0"),
        (lambda: noise_for_epsilon(1e-6, 1.0, 10**6, DELTA), "out of reach"),
        (lambda: DPConfig(noise_multiplier=1.0, clipping_norm=1.0, delta=1.0), "delta"),
    ],
)
def test_bad_inputs_are_refused_by_name(call: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()  # type: ignore[operator]


def test_the_run_config_carries_delta_and_dp_needs_both_noise_and_clipping() -> None:
    config = FederatedConfig(secagg=None, dp=DPConfig(noise_multiplier=1.0, clipping_norm=2.0, delta=1e-4))
    assert FederatedConfig.from_run_config(config.run_config()).dp == config.dp
    assert FederatedConfig.from_run_config({"dp.noise-multiplier": 1.0, "dp.delta": 1e-4}).dp is None


@pytest.mark.federated
@pytest.mark.governance
def test_a_dp_run_records_its_epsilon_in_the_run_and_the_release_card(
    server_settings: ServerSettings, session_factory: sessionmaker, tmp_path: Path
) -> None:
    config = FederatedConfig(
        num_clients=4, num_rounds=2, local_epochs=1, fraction_fit=0.5, secagg=None,
        dp=DPConfig(noise_multiplier=0.8, clipping_norm=10.0, delta=1e-4),
    )
    result = run_local(config)
    runs = TrainingRuns(session_factory, ArtifactStore(server_settings.artifacts_dir))
    record = runs.record("digits", result, started_at=datetime.now(UTC))

    # Computed here straight from dp-accounting: 2 rounds, 2 of 4 clients sampled.
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(0.8)), 2))
    expected = accountant.get_epsilon(1e-4)
    privacy = runs.get(record.id).config["privacy"]
    assert privacy["epsilon"] == pytest.approx(expected, abs=1e-3)
    assert (privacy["delta"], privacy["rounds"], privacy["sampling_rate"]) == (1e-4, 2, 0.5)
    assert privacy["accountant"] == ACCOUNTANT and "dp-accounting 0.6.0" in ACCOUNTANT

    release = publish_package(server_settings, session_factory, make_package(
        tmp_path / "pkg", task="digits",
        lineage={"data_fingerprint": result.data_fingerprint, "code_version": "0.1.0",
                 "training_run_id": record.id, "parent_version": None,
                 "checkpoint_sha256": record.weights_sha256}))
    with session_factory() as session:
        card, _ = signed_part(session, release.model, release.version)
    assert card["edgeops"]["training"]["dp"]["epsilon"] == privacy["epsilon"]
    [line] = [e["mitigation_strategy"] for e in card["considerations"]["ethical_considerations"]
              if "differential privacy" in e.get("mitigation_strategy", "")]
    assert f"epsilon {privacy['epsilon']:g}, delta 0.0001" in line and "over 2 rounds" in line
