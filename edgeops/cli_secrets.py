"""Secrets for CLI commands: from a file, standard input or the environment, never argv.

A value on the command line is readable by every user of the machine (`ps`, /proc) and
stays in shell history, so no `edgeops` option takes a token or password itself:

    --token-file PATH     the secret is the file's content (surrounding whitespace dropped)
    --token-file -        ... or what standard input holds (echo "$T" | edgeops ...)
    EDGEOPS_TOKEN=...     ... or an environment variable, where the command names one

tests/security/test_secrets.py walks every command and fails on an option that would take
a secret's value.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgeops.errors import ConfigError

__all__ = ["STDIN", "read_secret"]

STDIN = Path("-")
MAX_SECRET_BYTES = 64 * 1024


def read_secret(path: Path | None, *, what: str, env_var: str | None = None) -> str | None:
    """The secret in the file `path` ("-": standard input), else in `env_var`, else None.

    ConfigError names the file and `what` (e.g. "API token") if it cannot be read or is empty.
    """
    if path is None:
        value = os.environ.get(env_var, "") if env_var else ""
        return value.strip() or None
    if path == STDIN:
        where = "standard input"
        text = sys.stdin.read(MAX_SECRET_BYTES + 1)
    else:
        where = str(path)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read(MAX_SECRET_BYTES + 1)
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read the {what} from {where}: {err}") from err
    if len(text) > MAX_SECRET_BYTES:
        raise ConfigError(f"the {what} in {where} is longer than {MAX_SECRET_BYTES} bytes")
    secret = text.strip()
    if not secret:
        raise ConfigError(f"the {what} in {where} is empty")
    return secret
