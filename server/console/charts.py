"""Inline SVG charts for console pages, generated in Python (no JavaScript, no CDN).

    Series(label, color, values)          one line; None values leave a gap
    line_chart(title, xs, series, ...)    a time-series chart as an <svg> string
    bar_chart(title, labels, values, ...) horizontal bars (e.g. the top drifted features)

Every label is escaped; numbers are formatted, never interpolated raw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from server.console.render import e

__all__ = ["Series", "bar_chart", "line_chart"]

_W, _H = 560, 180
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 24, 28


@dataclass(frozen=True)
class Series:
    label: str
    color: str  # a CSS colour chosen by the page, not by the user
    values: Sequence[float | None]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _range(series: Sequence[Series], y_range: tuple[float, float] | None) -> tuple[float, float]:
    if y_range is not None:
        return y_range
    found = [v for s in series for v in _finite(s.values)]
    low, high = (min(found), max(found)) if found else (0.0, 1.0)
    low = min(low, 0.0)
    if high <= low:
        high = low + 1.0
    return low, high * 1.1 if high > 0 else high


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def line_chart(
    title: str,
    xs: Sequence[float],
    series: Sequence[Series],
    *,
    ident: str = "",
    y_range: tuple[float, float] | None = None,
    marks: Sequence[bool] = (),
) -> str:
    """A line chart over the times `xs` (epoch seconds); `marks[i]` shades window i (drift)."""
    low, high = _range(series, y_range)
    n = len(xs)
    inner_w, inner_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x_at(i: int) -> float:
        return _LEFT + (inner_w * i / (n - 1) if n > 1 else inner_w / 2)

    def y_at(v: float) -> float:
        return _TOP + inner_h * (1.0 - (v - low) / (high - low))

    parts = [
        f'<rect x="{_LEFT}" y="{_TOP}" width="{inner_w}" height="{inner_h}" fill="#fff" '
        'stroke="#cfd5dd"/>',
        f'<text x="{_LEFT}" y="15" font-size="13" font-weight="600">{e(title)}</text>',
    ]
    step = inner_w / max(n - 1, 1)
    for i, marked in enumerate(marks[:n]):
        if marked:
            parts.append(
                f'<rect class="mark" x="{x_at(i) - step / 2:.1f}" y="{_TOP}" width="{step:.1f}" '
                f'height="{inner_h}" fill="#fbd5d1" opacity="0.7"/>'
            )
    for frac in (0.0, 0.5, 1.0):
        v = low + (high - low) * frac
        y = y_at(v)
        parts.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef1f5"/>'
            f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>'
        )
    if n:
        parts.append(f'<text x="{_LEFT}" y="{_H - 8}" font-size="10">{_clock(xs[0])}</text>')
        parts.append(
            f'<text x="{_W - _RIGHT}" y="{_H - 8}" font-size="10" text-anchor="end">'
            f"{_clock(xs[-1])} UTC</text>"
        )
    legend_x = _W - _RIGHT
    for s in reversed(series):
        parts.append(
            f'<text x="{legend_x}" y="15" font-size="11" text-anchor="end" fill="{e(s.color)}">'
            f"■ {e(s.label)}</text>"
        )
        legend_x -= 10 + 7 * (len(s.label) + 2)
    for s in series:
        segment: list[str] = []
        runs: list[list[str]] = []
        for i, value in enumerate(s.values[:n]):
            if value is None or not math.isfinite(float(value)):
                if segment:
                    runs.append(segment)
                segment = []
                continue
            segment.append(f"{x_at(i):.1f},{y_at(float(value)):.1f}")
        if segment:
            runs.append(segment)
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{e(s.color)}"/>')
            else:
                parts.append(
                    f'<polyline fill="none" stroke="{e(s.color)}" stroke-width="2" '
                    f'points="{" ".join(run)}"/>'
                )
    if not n:
        parts.append(
            f'<text x="{_W / 2}" y="{_H / 2}" font-size="12" text-anchor="middle">no windows yet</text>'
        )
    attr = f' id="{e(ident)}"' if ident else ""
    return (
        f'<svg class="chart"{attr} viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-label="{e(title)}">{"".join(parts)}</svg>'
    )


def bar_chart(
    title: str, labels: Sequence[str], values: Sequence[float], *, ident: str = "",
    color: str = "#d0453b",
) -> str:
    """Horizontal bars, one per label, scaled to the largest value."""
    row_h = 20
    height = _TOP + row_h * max(len(labels), 1) + 8
    top = max(_finite(values), default=0.0) or 1.0
    inner_w = _W - 140 - 60
    parts = [f'<text x="4" y="15" font-size="13" font-weight="600">{e(title)}</text>']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = _TOP + i * row_h
        width = max(inner_w * float(value) / top, 1.0) if math.isfinite(float(value)) else 1.0
        parts.append(
            f'<text x="136" y="{y + 14}" font-size="11" text-anchor="end">{e(label)}</text>'
            f'<rect x="140" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}" fill="{e(color)}"/>'
            f'<text x="{144 + width:.1f}" y="{y + 14}" font-size="11">{float(value):.3g}</text>'
        )
    if not labels:
        parts.append(f'<text x="140" y="{_TOP + 14}" font-size="12">no drifted features</text>')
    attr = f' id="{e(ident)}"' if ident else ""
    return (
        f'<svg class="chart"{attr} viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
        f'role="img" aria-label="{e(title)}">{"".join(parts)}</svg>'
    )
