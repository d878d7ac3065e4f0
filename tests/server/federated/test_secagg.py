"""SecAgg+ through the real ServerApp/ClientApp code: same aggregate as plain FedAvg, masked
replies, dropouts within and beyond the reconstruction threshold, the summed histogram."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat

from edgeops.errors import TrainingError
from edgeops.sketches import feature_histograms
from edgeops.tasks import load_task
from server.federated.config import DPConfig, FederatedConfig, SecAggConfig
from tests.server.federated.support import run_local

pytestmark = [pytest.mark.federated]

# SecAgg+ quantizes weights*(n_i/max_weight) over [-8, 8] into 2**22 steps: ~4e-6 per step.
QUANTIZATION_ATOL = 1e-4


def _config(**overrides: object) -> FederatedConfig:
    values: dict[str, object] = {
        "num_clients": 4,
        "num_rounds": 1,
        "local_epochs": 1,
        "secagg": SecAggConfig(num_shares=3, reconstruction_threshold=2),
    }
    values.update(overrides)
    return FederatedConfig(**values)  # type: ignore[arg-type]


def test_secagg_aggregate_equals_fedavg_and_the_server_only_receives_masked_vectors() -> None:
    updates: dict[int, list[np.ndarray]] = {}
    masked: dict[int, list[np.ndarray]] = {}

    def record_update(msg: Message, ctxt: Context, call_next):  # innermost: the true update
        reply = call_next(msg, ctxt)
        if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
            fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
            updates[ctxt.node_id] = parameters_to_ndarrays(fit_res.parameters)
        return reply

    def server_receives(sent: Message, reply: Message) -> None:
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS) if reply.has_content() else None
        if configs is not None and Key.MASKED_PARAMETERS in configs:
            masked[reply.metadata.src_node_id] = [
                bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]
            ]
            assert not reply.content.array_records or all(
                len(r) == 0 for r in reply.content.array_records.values()
            ), "a SecAgg+ reply must not carry the plain weights"

    plain = run_local(_config(secagg=None))
    secure = run_local(_config(), observer=server_receives, extra_mods=[record_update])

    for a, b in zip(plain.weights, secure.weights, strict=True):
        np.testing.assert_allclose(a, b, atol=QUANTIZATION_ATOL)
    assert plain.rounds[0].heldout_accuracy == pytest.approx(secure.rounds[0].heldout_accuracy, abs=0.01)
    assert set(masked) == set(updates) and len(masked) == 4
    for node_id, vectors in masked.items():
        # The masked upload has one entry per weight (plus the SecAgg+ weight factor), and it
        # looks nothing like that client's update: not the floats, not their quantization.
        flat_update = np.concatenate([u.ravel() for u in updates[node_id]])
        flat_masked = np.concatenate([m.ravel() for m in vectors]).astype(np.float64)
        assert flat_masked.size >= flat_update.size
        assert not np.allclose(flat_masked[-flat_update.size :], flat_update, atol=1.0)
        quantized = np.round((np.clip(flat_update, -8, 8) + 8) * (2**22 / 16))
        same = np.mean(np.isclose(flat_masked[-flat_update.size :], quantized, atol=2**10))
        assert same < 0.01, f"node {node_id}: {same:.1%} of its upload equals its quantized update"


def test_dropout_within_the_threshold_completes_and_matches_fedavg_of_the_survivors() -> None:
    config = _config(num_clients=5, secagg=SecAggConfig(num_shares=5, reconstruction_threshold=3))

    secure = run_local(config.__class__(**{**config.__dict__, "drop_partitions": (2,)}))
    plain = run_local(config.__class__(**{**config.__dict__, "secagg": None, "drop_partitions": (2,)}))

    outcome = secure.rounds[0]
    assert (outcome.status, outcome.sampled, outcome.replied, outcome.dropped) == ("aggregated", 5, 4, 1)
    for a, b in zip(plain.weights, secure.weights, strict=True):
        np.testing.assert_allclose(a, b, atol=QUANTIZATION_ATOL)


def test_dropouts_beyond_the_threshold_halt_every_round_and_the_run_fails() -> None:
    config = _config(
        num_clients=5,
        num_rounds=2,
        secagg=SecAggConfig(num_shares=5, reconstruction_threshold=3),
        drop_partitions=(0, 1, 2),
    )

    with pytest.raises(TrainingError) as caught:
        run_local(config)

    message = str(caught.value)
    assert "nothing was registered" in message
    assert message.count("halted - secure aggregation halted") == 2


def test_every_round_outcome_is_recorded() -> None:
    result = run_local(_config(num_rounds=2))
    assert [r.status for r in result.rounds] == ["aggregated", "aggregated"]
    assert all(r.sampled == 4 and r.replied == 4 and r.dropped == 0 for r in result.rounds)
    assert result.rounds[1].heldout_accuracy > result.initial_metrics["accuracy"]


def test_the_server_gets_the_exact_sum_of_the_local_histograms_through_secagg() -> None:
    task = load_task("digits")
    data = task.load_data()

    result = run_local(_config())

    expected = feature_histograms(data.x_train, task.input_schema.feature_bin_edges)
    assert result.drift_reference is not None
    assert result.drift_examples == len(data.x_train)
    np.testing.assert_array_equal(result.drift_reference, expected)


def test_dp_with_a_failing_client_trains_nothing_and_says_why() -> None:
    config = _config(secagg=None, dp=DPConfig(noise_multiplier=0.1, clipping_norm=5.0), drop_partitions=(1,))

    with pytest.raises(TrainingError, match="DP wrapper discards any round with failures"):
        run_local(config)


def test_dp_without_failures_trains_and_records_its_parameters() -> None:
    config = _config(dp=DPConfig(noise_multiplier=0.01, clipping_norm=10.0))

    result = run_local(config)

    assert result.rounds[0].status == "aggregated"
    assert result.privacy is not None and result.privacy["noise_stddev"] == pytest.approx(0.01 * 10 / 4)


def test_every_client_failing_is_not_a_success() -> None:
    with pytest.raises(TrainingError, match="every sampled client failed"):
        run_local(_config(secagg=None, drop_partitions=(0, 1, 2, 3)))


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_other_strategies_train(strategy: str) -> None:
    from server.federated.config import StrategyConfig

    result = run_local(_config(strategy=StrategyConfig(name=strategy)))  # type: ignore[arg-type]

    assert result.rounds[0].status == "aggregated"
    assert result.rounds[0].heldout_accuracy > result.initial_metrics["accuracy"]
