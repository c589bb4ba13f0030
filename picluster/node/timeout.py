"""A task's `timeout`: its outcome says "timeout" once it has run that long.

huey's thread workers cannot stop a task, and Python cannot stop a thread: the task runs
on in a thread of its own until it returns, and whatever it returns then is ignored.
(`run` stops its command itself, process group and all.)"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from picluster.tasks import TaskTimedOut

__all__ = ["within"]

T = TypeVar("T")


def within(seconds: float | None, function: Callable[[], T]) -> T:
    """`function()`; TaskTimedOut if it has not returned after `seconds` (None: never)."""
    if seconds is None:
        return function()
    done: dict[str, Any] = {}

    def call() -> None:
        try:
            done["result"] = function()
        except BaseException as error:  # handed to the caller's thread
            done["error"] = error

    thread = threading.Thread(target=call, name="timed task", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TaskTimedOut(f"timed out after {seconds:g} s (the task's timeout); it was left "
                           "to finish on its own, and its result is ignored")
    if "error" in done:
        raise done["error"]
    return done["result"]
