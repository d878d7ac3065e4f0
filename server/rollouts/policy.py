"""A rollout's policy: how its waves proceed, when it gives up, and when devices switch.

`RolloutPolicy` is a frozen dataclass validated on construction (ValueError naming the
field); it is stored as JSON with the rollout (`to_json` / `from_json`) and its defaults
are the API's, CLI's and console's defaults, defined once here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgeops.switch_window import SwitchWindow
from edgeops.update_states import SWITCH_MODES, SwitchMode

__all__ = ["ANY_GROUP", "DEFAULT_WAVES_PCT", "RolloutPolicy"]

DEFAULT_WAVES_PCT: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
ANY_GROUP = "*"  # the `switch_windows` key of devices whose group has no window of its own


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """How a rollout proceeds and when it gives up. Percentages are 0-100."""

    waves_pct: tuple[float, ...] = DEFAULT_WAVES_PCT  # cumulative share of the target devices
    soak_s: float = 60.0  # wait after a wave passed before the next one starts
    success_pct: float = 90.0  # of a wave's reachable devices that must commit for it to pass
    failure_threshold_pct: float = 10.0  # abort when failures reach this share of updated...
    failure_min_count: int = 1  # ...and at least this many devices failed
    device_timeout_s: float = 600.0  # a sent device with no verdict by then has timed out
    # Devices updating at once (None: a whole wave at once). A wave's other devices stay
    # queued until one settles: a big wave on a small server (or shared link) does not
    # download, smoke-test and switch all at once and time out on its own load.
    max_in_flight: int | None = None
    # Download now, switch later. "now": switch once staged. "window": hold staged until
    # the device's UTC clock is inside its group's window in `switch_windows` ({group:
    # "HH:MM-HH:MM"}, key "*" for the other groups). "command": hold until the operator
    # switches (`switch_staged`). None: "window" when windows are given, else "now".
    switch: SwitchMode | None = None
    switch_windows: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        waves = tuple(float(p) for p in self.waves_pct)
        if not waves or any(not 0 < p <= 100 for p in waves) or list(waves) != sorted(set(waves)):
            raise ValueError("waves_pct must be increasing percentages in (0, 100]")
        if waves[-1] != 100.0:
            waves = (*waves, 100.0)
        object.__setattr__(self, "waves_pct", waves)
        if self.soak_s < 0 or self.device_timeout_s <= 0:
            raise ValueError("soak_s must be >= 0 and device_timeout_s > 0")
        if not 0 < self.success_pct <= 100 or not 0 < self.failure_threshold_pct <= 100:
            raise ValueError("success_pct and failure_threshold_pct must be in (0, 100]")
        if self.failure_min_count < 1:
            raise ValueError("failure_min_count must be at least 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1 (or None: a whole wave at once)")
        windows = dict(self.switch_windows)
        switch = self.switch if self.switch is not None else ("window" if windows else "now")
        if switch not in SWITCH_MODES:
            raise ValueError(f"switch must be one of {', '.join(SWITCH_MODES)}, not {switch!r}")
        if switch == "window" and not windows:
            raise ValueError('switch "window" needs switch_windows: {group: "HH:MM-HH:MM"}')
        if switch != "window" and windows:
            raise ValueError(f'switch_windows apply only with switch "window", not {switch!r}')
        for group, text in windows.items():
            if not isinstance(group, str) or not group:
                raise ValueError(f"switch_windows keys are device groups, got {group!r}")
            window = SwitchWindow.parse(text)  # SwitchWindowError (a ValueError) names it
            windows[group] = str(window)
        object.__setattr__(self, "switch", switch)
        object.__setattr__(self, "switch_windows", windows)

    @property
    def holds(self) -> bool:
        """Devices hold in `staged` until their window or a switch command."""
        return self.switch != "now"

    def window_for(self, group: str | None) -> str | None:
        """The switch window of a device in `group` (None: it waits for a switch command)."""
        windows = self.switch_windows
        return windows.get(group or "default", windows.get(ANY_GROUP))

    def to_json(self) -> dict[str, object]:
        return {
            "waves_pct": list(self.waves_pct),
            "soak_s": self.soak_s,
            "success_pct": self.success_pct,
            "failure_threshold_pct": self.failure_threshold_pct,
            "failure_min_count": self.failure_min_count,
            "device_timeout_s": self.device_timeout_s,
            "max_in_flight": self.max_in_flight,
            "switch": self.switch,
            "switch_windows": dict(self.switch_windows),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> RolloutPolicy:
        return cls(**{k: (tuple(v) if k == "waves_pct" else v) for k, v in raw.items()})  # type: ignore[arg-type]
