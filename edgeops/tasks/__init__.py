"""Tasks: built-in ones by name, user ones as `module:attribute`."""

from __future__ import annotations

import importlib

from edgeops.errors import TaskError
from edgeops.tasks.base import Dataset, Task, TrainConfig, TrainResult
from edgeops.tasks.partition import partition_devices, partition_dirichlet, partition_iid

BUILTIN_TASKS = {"digits": "edgeops.tasks.digits:digits"}

__all__ = [
    "BUILTIN_TASKS",
    "Dataset",
    "Task",
    "TrainConfig",
    "TrainResult",
    "load_task",
    "partition_devices",
    "partition_dirichlet",
    "partition_iid",
]


def load_task(spec: str) -> Task:
    """Resolve `digits` or `package.module:attribute` to a Task.

    The attribute may be a Task or a zero-argument callable returning one.
    """
    target = BUILTIN_TASKS.get(spec, spec)
    if ":" not in target:
        known = ", ".join(sorted(BUILTIN_TASKS))
        raise TaskError(f"unknown task {spec!r}: use a built-in task ({known}) or module:attribute")
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TaskError(f"cannot import task module {module_name!r}: {err}") from err
    try:
        value = getattr(module, attribute)
    except AttributeError as err:
        raise TaskError(f"module {module_name!r} has no attribute {attribute!r}") from err
    task = value() if callable(value) and not isinstance(value, Task) else value
    if not isinstance(task, Task):
        raise TaskError(f"{spec!r} is a {type(task).__name__}, not an edgeops Task")
    return task
