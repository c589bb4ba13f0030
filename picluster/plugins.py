"""Tasks of your own: installed packages add tasks through the entry-point group
`picluster.tasks`, the way Celery and huey users register theirs with a decorator.

An entry point's name is the task's name; it points at a function `(args, context)`
decorated with `task(Schema(...))`, or at a `(function, Schema)` pair.  The task's
version, which the node reports in its facts, is its package's::

    # mypackage/__init__.py
    from picluster.plugins import task
    from picluster.schema import Int, Schema

    @task(Schema({"n": Int(minimum=0, maximum=90)}))
    def fib(args, context):
        ...

    # pyproject.toml
    [project.entry-points."picluster.tasks"]
    fib = "mypackage:fib"

A package that fails to load (an import error, no schema, a name taken) is left out,
logged and reported (`Plugins.errors`, and the node's facts): the agent runs on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from picluster.schema import Schema
from picluster.tasks import Catalogue, TaskFunction

__all__ = ["GROUP", "Plugins", "load", "task"]

log = logging.getLogger(__name__)

GROUP = "picluster.tasks"
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_SCHEMA = "picluster_schema"  # the attribute `task` gives a function


def task(schema: Schema) -> Callable[[TaskFunction], TaskFunction]:
    """Mark a function as a task taking what `schema` allows (its entry point names it)."""
    def decorator(function: TaskFunction) -> TaskFunction:
        setattr(function, _SCHEMA, schema)
        return function
    return decorator


@dataclass(frozen=True)
class Plugins:
    """A catalogue with the tasks installed packages add, and those that failed."""

    catalogue: Catalogue
    errors: dict[str, str] = field(default_factory=dict)  # entry point name -> why not


def _resolve(loaded: Any) -> tuple[TaskFunction, Schema]:
    if isinstance(loaded, tuple) and len(loaded) == 2 and callable(loaded[0]) and \
            isinstance(loaded[1], Schema):
        return loaded[0], loaded[1]
    schema = getattr(loaded, _SCHEMA, None)
    if callable(loaded) and isinstance(schema, Schema):
        return loaded, schema
    raise TypeError("it is neither a function decorated with picluster.plugins.task(Schema) "
                    "nor a (function, Schema) pair")


def _package(point: EntryPoint) -> tuple[str, str]:
    """The name and version of the package that declares `point`."""
    dist = getattr(point, "dist", None)
    return (dist.name, dist.version) if dist is not None else ("unknown", "unknown")


def load(base: Catalogue, group: str = GROUP) -> Plugins:
    """`base` and every task the installed packages add through `group`."""
    catalogue = Catalogue(base)
    errors: dict[str, str] = {}
    for point in sorted(entry_points(group=group), key=lambda p: (p.name, p.value)):
        try:
            if not _NAME.fullmatch(point.name):
                raise ValueError(f"'{point.name}' is not a task name (lower-case letters, "
                                 "digits, '.', '_', '-')")
            if point.name in catalogue.names():
                raise ValueError(f"task '{point.name}' exists already")
            function, schema = _resolve(point.load())
        except (Exception, SystemExit) as error:  # a broken package never stops the agent
            errors[point.name] = f"{point.value} ({' '.join(_package(point))}): " \
                                 f"{type(error).__name__}: {error}"
            log.error("task %s from an installed package is left out: %s", point.name,
                      errors[point.name])
            continue
        catalogue.task(point.name, schema, _package(point)[1])(function)
    return Plugins(catalogue, errors)
