"""Console form bodies: `application/x-www-form-urlencoded`, bounded, without multipart;
and the hidden CSRF field every console form carries (`csrf_input`, checked by
server.console.auth)."""

from __future__ import annotations

from html import escape
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, HTTPException, Request

__all__ = ["CSRF_FIELD", "MAX_FORM_BYTES", "FormDep", "csrf_input", "read_form"]

MAX_FORM_BYTES = 16 * 1024
CSRF_FIELD = "csrf_token"


def csrf_input(token: str) -> str:
    """The hidden form field carrying the session's CSRF token."""
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(token)}">'


async def read_form(request: Request) -> dict[str, str]:
    """The form fields (values cut at 512 characters); 413 if too large, 400 if unreadable."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, detail=f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as err:
        raise HTTPException(400, detail=f"unreadable form: {err}") from err
    return {key: value[:512] for key, value in pairs}


FormDep = Annotated[dict[str, str], Depends(read_form)]
