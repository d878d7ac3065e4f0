"""One settings loader for every entry point: a flat TOML file plus `EDGEOPS_<SCOPE>_<FIELD>`
environment overrides, converted into a frozen dataclass by its field types.

    load_settings_file(AgentConfig, home / "agent.toml", scope="agent",
                       fixed={"home": home}, missing="no agent home at ...")

The agent (`agent.config.load_config`) and the server (`server.config.settings.load_settings`)
both load through here, so a file key, a variable name and an error read the same on both
sides. Supported field types: bool, int, float, str, Path, `X | None` of those, and
`tuple[str, ...]` (a TOML array of strings; in a variable, items separated by commas or
spaces). An environment value is text; a file value is TOML-typed and converted only where
that is lossless (an int for a float field, a number for a str field). Every bad input raises
ConfigError naming the file or the variable, and the field.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from edgeops.errors import ConfigError

__all__ = ["env_prefix", "env_variable", "load_settings_file", "read_toml"]

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"", "none", "off"})  # for an optional field that is not a string


def env_prefix(scope: str) -> str:
    """`EDGEOPS_AGENT_` for scope "agent"."""
    return f"EDGEOPS_{scope.upper()}_"


def env_variable(scope: str, field_name: str) -> str:
    """`EDGEOPS_AGENT_BROKER_PORT` for scope "agent" and field "broker_port"."""
    return f"{env_prefix(scope)}{field_name.upper()}"


def read_toml(path: Path, *, missing: str) -> dict[str, Any]:
    """The table in the TOML file `path`; ConfigError(`missing`) if there is no such file."""
    if not path.is_file():
        raise ConfigError(missing)
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err


def load_settings_file(
    cls: type[T],
    path: Path,
    *,
    scope: str,
    missing: str,
    fixed: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """`cls` built from `fixed`, the TOML file `path` and the `EDGEOPS_<SCOPE>_*` variables
    of `environ` (default: the process environment), later sources winning.

    Fields named in `fixed` (e.g. `home`) are not settings: the file may not name them and
    no variable overrides them. Raises ConfigError for a missing or malformed file, an
    unknown key, a value of the wrong type, or what `cls` itself refuses to be built from.
    """
    fixed = dict(fixed or {})
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{cls.__name__} is not a settings dataclass")
    hints = typing.get_type_hints(cls)
    settable = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in fixed}
    raw = read_toml(path, missing=missing)
    unknown = sorted(set(raw) - set(settable))
    if unknown:
        raise ConfigError(
            f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(settable))}"
        )
    values = {
        name: _from_file(value, settable[name], f"{path}: setting {name!r}")
        for name, value in raw.items()
    }
    env = os.environ if environ is None else environ
    for name, kind in settable.items():
        variable = env_variable(scope, name)
        text = env.get(variable)
        if text is not None:
            values[name] = _from_text(text, kind, f"{variable}={text!r}: setting {name!r}")
    try:
        return cls(**fixed, **values)
    except TypeError as err:  # a required setting is missing
        raise ConfigError(f"{path}: {err}") from err


def _is_str_tuple(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...)


def _optional(kind: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0], len(inner) != len(typing.get_args(kind))
        raise ConfigError(f"settings of type {kind} are not supported")
    return kind, False


def _expected(kind: Any, nullable: bool) -> str:
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             Path: "a path"}
    word = words.get(kind)
    if word is None:
        raise ConfigError(f"settings of type {kind} are not supported")
    return word + (" or none" if nullable else "")


def _from_text(text: str, declared: Any, where: str) -> Any:
    """An environment variable's text as a value of the `declared` type."""
    if _is_str_tuple(declared):
        return tuple(item for item in text.replace(",", " ").split() if item)
    kind, nullable = _optional(declared)
    expected = _expected(kind, nullable)
    value = text.strip().lower()
    if nullable and kind is not str and value in _NONE:
        return None
    if kind is bool:
        if value not in _TRUE | _FALSE:
            raise ConfigError(f"{where} must be {expected}")
        return value in _TRUE
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError as err:
            raise ConfigError(f"{where} must be {expected}") from err
    return Path(text) if kind is Path else text


def _from_file(value: Any, declared: Any, where: str) -> Any:
    """A TOML value as a value of the `declared` type (text goes through `_from_text`)."""
    if _is_str_tuple(declared):
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(f"{where} must be an array of strings, got {value!r}")
    kind, nullable = _optional(declared)
    expected = _expected(kind, nullable)
    if isinstance(value, str) and kind is not str:
        return _from_text(value, declared, where)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where} must be {expected}, got {value!r}")
