"""Device group and tag names as the API accepts them: one pattern, one tag check."""

from __future__ import annotations

import re

__all__ = ["LABEL", "clean_tags"]

LABEL = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def clean_tags(value: list[str]) -> list[str]:
    """The tags sorted and without repeats; ValueError naming the first bad ones."""
    bad = [tag for tag in value if not re.match(LABEL, tag)]
    if bad:
        raise ValueError(f"invalid tags {bad[:5]!r}: letters, digits, '.', '_', '-'")
    return sorted(set(value))
