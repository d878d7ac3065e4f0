"""HTML for the console pages. Every value is escaped; no external assets are referenced."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

__all__ = ["bar", "button_form", "page", "table"]


def e(value: object) -> str:
    return escape("" if value is None else str(value))


def page(title: str, body: str, user: Any | None = None) -> str:
    who = (
        f'<span class="who">{e(user.name)} ({e(user.role)})</span>'
        '<form method="post" action="/console/logout" class="inline">'
        '<button type="submit">Log out</button></form>'
        if user is not None
        else ""
    )
    nav = (
        '<nav><a href="/console/">Fleet</a> <a href="/console/rollouts">Rollouts</a> '
        f'<a href="/console/devices">Devices</a> {who}</nav>'
        if user is not None
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · EdgeOps</title>
<link rel="stylesheet" href="/console/static/console.css">
<script src="/console/static/console.js" defer></script>
</head><body>
<header><strong>EdgeOps</strong> console {nav}</header>
<main><h1>{e(title)}</h1>
{body}
</main></body></html>"""


def bar(done: int, failed: int, total: int, ident: str = "") -> str:
    """A progress bar: committed (green), failed (red), the rest empty."""
    total = max(total, 1)
    ok_pct = 100.0 * done / total
    bad_pct = 100.0 * failed / total
    attr = f' id="{e(ident)}"' if ident else ""
    return (
        f'<div class="bar"{attr}><span class="ok" style="width:{ok_pct:.1f}%"></span>'
        f'<span class="bad" style="width:{bad_pct:.1f}%"></span></div>'
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], ident: str = "") -> str:
    """`rows` hold HTML already escaped by the caller."""
    attr = f' id="{e(ident)}"' if ident else ""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def button_form(action: str, label: str, *, enabled: bool = True, ident: str = "") -> str:
    disabled = "" if enabled else " disabled"
    attr = f' id="{e(ident)}"' if ident else ""
    return (
        f'<form method="post" action="{e(action)}" class="inline">'
        f'<button type="submit"{attr}{disabled}>{e(label)}</button></form>'
    )
