"""The switch window, pure: parsing (and its errors) and "is now inside", by table."""

from __future__ import annotations

import calendar

import pytest

from edgeops.errors import ConfigError
from edgeops.switch_window import SwitchWindow, SwitchWindowError

pytestmark = [pytest.mark.ota]

DAY = calendar.timegm((2026, 12, 2, 0, 0, 0))  # a UTC midnight


def at(hhmmss: str, day: int = 0) -> float:
    h, m, s = (int(x) for x in hhmmss.split(":"))
    return DAY + day * 86400 + h * 3600 + m * 60 + s


@pytest.mark.parametrize(
    ("window", "now", "inside"),
    [
        ("02:00-04:00", "01:59:59", False),
        ("02:00-04:00", "02:00:00", True),  # the start is inside
        ("02:00-04:00", "03:59:59", True),
        ("02:00-04:00", "04:00:00", False),  # the end is not
        ("02:00-04:00", "14:00:00", False),
        ("22:00-02:00", "21:59:59", False),  # crosses midnight
        ("22:00-02:00", "22:00:00", True),
        ("22:00-02:00", "23:59:59", True),
        ("22:00-02:00", "00:00:00", True),
        ("22:00-02:00", "01:59:59", True),
        ("22:00-02:00", "02:00:00", False),
        ("23:59-00:01", "00:00:30", True),
        ("00:00-23:59", "23:59:30", False),
    ],
)
def test_inside_the_window(window: str, now: str, inside: bool) -> None:
    parsed = SwitchWindow.parse(window)
    assert parsed.contains(at(now)) is inside
    assert parsed.contains(at(now, day=400)) is inside  # any day, the same time of day
    assert (parsed.seconds_until_open(at(now)) == 0.0) is inside


@pytest.mark.parametrize(
    ("window", "now", "seconds"),
    [
        ("02:00-04:00", "01:59:00", 60.0),
        ("02:00-04:00", "04:00:00", 22 * 3600.0),  # tomorrow's window
        ("22:00-02:00", "12:00:00", 10 * 3600.0),
        ("22:00-02:00", "23:00:00", 0.0),
    ],
)
def test_seconds_until_the_window_opens(window: str, now: str, seconds: float) -> None:
    assert SwitchWindow.parse(window).seconds_until_open(at(now)) == seconds


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2:00-4:00", "HH:MM-HH:MM"),
        ("02:00", "HH:MM-HH:MM"),
        ("02:00-04:00 UTC", "HH:MM-HH:MM"),
        ("", "HH:MM-HH:MM"),
        ("24:00-02:00", "not a time of day"),
        ("02:60-04:00", "not a time of day"),
        ("03:00-03:00", "starts where it ends"),
        (None, "a string"),
        (120, "a string"),
    ],
)
def test_bad_windows_are_refused_with_a_clear_error(text: object, says: str) -> None:
    with pytest.raises(SwitchWindowError, match=says) as caught:
        SwitchWindow.parse(text)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)


def test_the_text_form_round_trips() -> None:
    assert str(SwitchWindow.parse(" 22:05-02:00 ")) == "22:05-02:00"
    assert SwitchWindow.parse("02:00-04:00") == SwitchWindow(120, 240)
    assert SwitchWindow.parse("22:00-02:00").crosses_midnight
