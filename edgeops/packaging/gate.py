"""The int8 accuracy gate: a pure check, so its rule is testable without a model."""

from __future__ import annotations

from edgeops.errors import ConfigError, QuantizationGateError

# Accuracies are fractions; a drop equal to the budget passes despite float rounding.
_TOLERANCE_PP = 1e-9


def check_accuracy_gate(fp32_accuracy: float, int8_accuracy: float, budget_pp: float) -> float:
    """Return the int8 accuracy drop in percentage points, or refuse if it passes the budget.

    The int8 model passes when `int8_accuracy >= fp32_accuracy - budget_pp / 100`
    (accuracies are fractions in [0, 1]; the budget is in percentage points).
    """
    if budget_pp < 0:
        raise ConfigError(f"the accuracy budget must be >= 0 pp, got {budget_pp}")
    drop_pp = (fp32_accuracy - int8_accuracy) * 100.0
    if drop_pp > budget_pp + _TOLERANCE_PP:
        raise QuantizationGateError(
            f"int8 accuracy {int8_accuracy:.2%} is {drop_pp:.2f} pp below fp32 accuracy "
            f"{fp32_accuracy:.2%}, past the accuracy budget of {budget_pp:.2f} pp"
        )
    return drop_pp
