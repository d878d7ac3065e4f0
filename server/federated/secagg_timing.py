"""Flower's SecAggPlusWorkflow, unchanged, with the wall time of each of its four stages
recorded per round (setup, share keys, collect masked vectors, unmask), so a run can say
where its secure-aggregation time went."""

from __future__ import annotations

import time
from typing import Any

from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

__all__ = ["StageTimedSecAggPlus"]

STAGES = ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage", "unmask_stage")


class StageTimedSecAggPlus(SecAggPlusWorkflow):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage_seconds: dict[int, dict[str, float]] = {}

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name not in STAGES:
            return attribute

        def timed(grid: Any, context: Any, state: Any) -> bool:
            server_round = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
            started = time.monotonic()
            try:
                return bool(attribute(grid, context, state))
            finally:
                stages = super(StageTimedSecAggPlus, self).__getattribute__("stage_seconds")
                stages.setdefault(server_round, {})[name.removesuffix("_stage")] = round(
                    time.monotonic() - started, 4
                )

        return timed
