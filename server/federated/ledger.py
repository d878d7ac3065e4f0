"""Every round's outcome, checked rather than assumed.

`RoundLedger` is the outermost strategy: it sees what each round sampled, what came back
and what the inner strategy (FedAvg/FedProx/FedAdam, maybe DP-wrapped) made of it. It takes
the drift histogram off the end of every reply before the inner strategy sees the weights.
`timed()` wraps the round's fit workflow to measure it and to see whether the global
parameters actually changed: Flower's workflows return normally (exit 0) when SecAgg+
halts, when every client fails or when the DP wrapper drops a round with any failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from edgeops.errors import PayloadError
from edgeops.federated.histograms import summed_counts

__all__ = ["RoundLedger", "RoundOutcome", "Workflow"]

logger = logging.getLogger(__name__)

Workflow = Callable[[Any, Any], None]
RoundStatus = Literal["aggregated", "halted"]
Evaluator = Callable[[NDArrays], dict[str, float]]


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    status: RoundStatus
    reason: str
    sampled: int
    replied: int
    dropped: int
    fit_seconds: float
    round_seconds: float
    train_loss: float | None = None
    federated_loss: float | None = None
    federated_accuracy: float | None = None
    heldout_loss: float | None = None
    heldout_accuracy: float | None = None
    histogram_examples: int | None = None
    stage_seconds: dict[str, float] | None = None  # SecAgg+: setup, share_keys, ...

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Round:
    sampled: int = 0
    replied: int | None = None  # None: aggregate_fit was never reached
    failed: int = 0
    returned_parameters: bool = False
    fit_seconds: float = 0.0
    changed: bool = False
    train_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    histogram: np.ndarray | None = None
    histogram_examples: int | None = None
    started: float = field(default_factory=time.monotonic)


class RoundLedger(Strategy):
    """Wraps `inner`; records each round; strips and sums the drift histograms."""

    def __init__(
        self,
        inner: Strategy,
        *,
        num_model_arrays: int,
        evaluator: Evaluator | None = None,
        secure: bool = False,
        private: bool = False,
        on_round: Callable[[RoundOutcome], None] | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self._num_model_arrays = num_model_arrays
        self._evaluator = evaluator
        self._secure = secure
        self._private = private
        self._on_round = on_round
        self._rounds: dict[int, _Round] = {}
        self.outcomes: list[RoundOutcome] = []
        self.initial_metrics: dict[str, float] = {}
        self.drift_reference: np.ndarray | None = None
        self.drift_examples: int = 0
        self.stage_seconds: dict[int, dict[str, float]] = {}

    def __repr__(self) -> str:
        return f"RoundLedger({self.inner!r})"

    # ---- workflow wrappers ------------------------------------------------------------

    def timed(self, fit_workflow: Workflow) -> Workflow:
        """The fit workflow, timed, noting whether the global parameters changed."""

        def run(grid: Any, context: Any) -> None:
            server_round = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
            entry = self._rounds.setdefault(server_round, _Round())
            before = context.state.array_records[MAIN_PARAMS_RECORD]
            started = time.monotonic()
            fit_workflow(grid, context)
            entry.fit_seconds = time.monotonic() - started
            entry.changed = context.state.array_records[MAIN_PARAMS_RECORD] is not before

        return run

    def closing(self, evaluate_workflow: Workflow) -> Workflow:
        """The evaluate workflow, then the round's outcome is final and reported."""

        def run(grid: Any, context: Any) -> None:
            server_round = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
            entry = self._rounds.get(server_round)
            if entry is not None and entry.changed:
                evaluate_workflow(grid, context)  # nothing new to evaluate after a halt
            self._close(server_round)

        return run

    # ---- Strategy ---------------------------------------------------------------------

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        entry = self._rounds.setdefault(server_round, _Round())
        entry.sampled = len(instructions)
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        entry = self._rounds.setdefault(server_round, _Round())
        entry.replied, entry.failed = len(results), len(failures)
        stripped, histogram = self._strip_histograms(results)
        parameters, metrics = self.inner.aggregate_fit(server_round, stripped, failures)
        entry.returned_parameters = parameters is not None
        if "train_loss" in metrics:
            entry.train_loss = float(metrics["train_loss"])
        if parameters is not None and histogram is not None:
            entry.histogram, entry.histogram_examples = histogram
        return parameters, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        loss, metrics = self.inner.aggregate_evaluate(server_round, results, failures)
        entry = self._rounds.setdefault(server_round, _Round())
        if loss is not None:
            entry.metrics["federated_loss"] = float(loss)
        if "accuracy" in metrics:
            entry.metrics["federated_accuracy"] = float(metrics["accuracy"])
        return loss, metrics

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        if self._evaluator is None:
            return None
        measured = self._evaluator(parameters_to_ndarrays(parameters))
        if server_round == 0:
            self.initial_metrics = dict(measured)
        else:
            entry = self._rounds.setdefault(server_round, _Round())
            entry.metrics["heldout_loss"] = measured["loss"]
            entry.metrics["heldout_accuracy"] = measured["accuracy"]
        return measured["loss"], {"accuracy": measured["accuracy"]}

    # ---- internals --------------------------------------------------------------------

    def _strip_histograms(
        self, results: list[tuple[ClientProxy, FitRes]]
    ) -> tuple[list[tuple[ClientProxy, FitRes]], tuple[np.ndarray, int] | None]:
        """Replies without the histogram array, and the summed histogram if all had one."""
        stripped: list[tuple[ClientProxy, FitRes]] = []
        pairs: list[tuple[np.ndarray, int]] = []
        decoded: dict[int, tuple[Parameters, np.ndarray | None]] = {}
        for proxy, fit_res in results:
            key = id(fit_res.parameters)  # SecAgg+ hands every reply the same aggregate
            if key not in decoded:
                arrays = parameters_to_ndarrays(fit_res.parameters)
                if len(arrays) == self._num_model_arrays + 1:
                    decoded[key] = (ndarrays_to_parameters(arrays[:-1]), arrays[-1])
                else:
                    decoded[key] = (fit_res.parameters, None)
            parameters, frequencies = decoded[key]
            if frequencies is not None:
                pairs.append((frequencies, fit_res.num_examples))
            stripped.append((proxy, replace(fit_res, parameters=parameters)))
        if not pairs or len(pairs) != len(results):
            return stripped, None
        try:
            counts = summed_counts(pairs)
        except PayloadError as err:
            logger.warning("ignoring malformed drift histograms: %s", err)
            return stripped, None
        return stripped, (counts, sum(n for _, n in pairs))

    def _close(self, server_round: int) -> None:
        entry = self._rounds.setdefault(server_round, _Round())
        status: RoundStatus = "aggregated" if entry.changed else "halted"
        reason = "new global model" if entry.changed else self._halt_reason(entry)
        replied = entry.replied if entry.replied is not None else 0
        if entry.changed and entry.histogram is not None:
            self.drift_reference = entry.histogram
            self.drift_examples = int(entry.histogram_examples or 0)
        outcome = RoundOutcome(
            round=server_round,
            status=status,
            reason=reason,
            sampled=entry.sampled,
            replied=replied,
            dropped=max(entry.sampled - replied, 0),
            fit_seconds=round(entry.fit_seconds, 4),
            round_seconds=round(time.monotonic() - entry.started, 4),
            train_loss=entry.train_loss,
            federated_loss=entry.metrics.get("federated_loss"),
            federated_accuracy=entry.metrics.get("federated_accuracy"),
            heldout_loss=entry.metrics.get("heldout_loss"),
            heldout_accuracy=entry.metrics.get("heldout_accuracy"),
            histogram_examples=entry.histogram_examples if entry.changed else None,
            stage_seconds=self.stage_seconds.get(server_round),
        )
        self.outcomes.append(outcome)
        log = logger.info if entry.changed else logger.warning
        log("round %d %s: %s", server_round, status, reason)
        if self._on_round is not None:
            self._on_round(outcome)

    def _halt_reason(self, entry: _Round) -> str:
        if entry.sampled == 0:
            return "no clients were sampled"
        if entry.replied is None:
            if self._secure:
                return (
                    "secure aggregation halted: too few clients answered a SecAgg+ stage "
                    "(some client kept fewer live neighbours than the reconstruction threshold)"
                )
            return "the round ended before aggregation"
        if entry.replied == 0:
            return f"every sampled client failed ({entry.failed} failures)"
        if self._private and entry.failed:
            return (
                f"the DP wrapper discards any round with failures ({entry.failed} of "
                f"{entry.sampled} clients failed)"
            )
        return f"the strategy returned no new parameters ({entry.replied} replies, {entry.failed} failures)"
