"""Can this agent run a release? Checked from the signed release info, before any download.

A release may declare `min_agent_version` (this agent's `edgeops.__version__` must be at
least that) and `required_opset` (the ai.onnx opset its graph imports; this agent's
onnxruntime must implement it). The opset onnxruntime supports is not exposed by its API,
so it comes from the release-notes table below (`max_onnx_opset` in the agent settings
overrides it, e.g. for a custom build).

A release older than the one running (same model, lower version) is a downgrade: it may
be a known-bad or known-vulnerable model that is still validly signed, so only an explicit
rollback command from the server installs it (`downgrade`).
"""

from __future__ import annotations

import re

__all__ = ["ORT_MAX_OPSET", "downgrade", "incompatibility", "parse_version", "supported_opset"]

# onnxruntime minor version -> highest ai.onnx opset it implements (ORT release notes).
ORT_MAX_OPSET: dict[tuple[int, int], int] = {
    (1, 14): 18,
    (1, 15): 19,
    (1, 16): 19,
    (1, 17): 20,
    (1, 18): 21,
    (1, 19): 21,
    (1, 20): 21,
    (1, 21): 22,
    (1, 22): 22,
    (1, 23): 23,
}
_VERSION = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string; ValueError if it does not start with one."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part or 0) for part in match.groups())  # type: ignore[return-value]


def supported_opset(ort_version: str) -> int:
    """The highest ai.onnx opset `ort_version` implements (newer than the table: its last)."""
    major, minor, _ = parse_version(ort_version)
    known = sorted(ORT_MAX_OPSET)
    if (major, minor) in ORT_MAX_OPSET:
        return ORT_MAX_OPSET[(major, minor)]
    if (major, minor) > known[-1]:
        return ORT_MAX_OPSET[known[-1]]
    older = [k for k in known if k <= (major, minor)]
    return ORT_MAX_OPSET[older[-1]] if older else 17


def incompatibility(
    min_agent_version: str | None,
    required_opset: int | None,
    agent_version: str,
    max_opset: int,
) -> str | None:
    """Why this agent cannot run a release with these requirements, or None if it can."""
    if min_agent_version is not None:
        try:
            too_old = parse_version(agent_version) < parse_version(min_agent_version)
        except ValueError:
            too_old = True
        if too_old:
            return (
                f"incompatible release: needs agent >= {min_agent_version}, "
                f"this agent is {agent_version}"
            )
    if required_opset is not None and required_opset > max_opset:
        return (
            f"incompatible release: needs onnx opset {required_opset}, "
            f"this agent's onnxruntime supports up to {max_opset}"
        )
    return None


def downgrade(
    running: tuple[str, int] | None, candidate: tuple[str, int], *, allowed: bool
) -> str | None:
    """Why the (model, version) `candidate` must not replace `running`, or None if it may.

    Versions of different models are not comparable: a switch of model is not a downgrade.
    """
    if running is None or allowed:
        return None
    (model, version), (new_model, new_version) = running, candidate
    if new_model != model or new_version >= version:
        return None
    return (
        f"downgrade refused: {new_model} v{new_version} is older than the running "
        f"v{version}; only an explicit rollback command (allow_downgrade) installs it"
    )
