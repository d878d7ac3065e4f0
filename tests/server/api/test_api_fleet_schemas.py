"""Request validation of the fleet API, without a server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.api.routes.deployments import DeploymentCreate

pytestmark = [pytest.mark.rollouts]


@pytest.mark.parametrize(
    "target",
    ["models/digits/3/int8.onnx", "digits-3.int8.onnx", "a/b_c+d/e.tar.gz"],
)
def test_accepts_relative_target_paths(target: str) -> None:
    assert DeploymentCreate(target=target).target == target


@pytest.mark.parametrize(
    "target",
    ["", "/abs/path", "../escape", "a/../b", "a/./b", "a//b", "trailing/", "sp ace", "x" * 301],
)
def test_refuses_unsafe_target_paths(target: str) -> None:
    with pytest.raises(ValidationError):
        DeploymentCreate(target=target)


def test_devices_are_validated_and_deduplicated() -> None:
    assert DeploymentCreate(target="t", devices=["d1", "d2", "d1"]).devices == ["d1", "d2"]
    with pytest.raises(ValidationError):
        DeploymentCreate(target="t", devices=[])
    with pytest.raises(ValidationError):
        DeploymentCreate(target="t", devices=["../etc"])
    with pytest.raises(ValidationError):
        DeploymentCreate.model_validate({"target": "t", "rollout": "fast"})
