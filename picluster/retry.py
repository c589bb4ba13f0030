"""Retrying with jittered exponential backoff: the one loop every "not yet, try again"
in picluster uses (git that does not answer yet, a node that cannot register yet)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["backoffs", "retry"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def backoffs(first: float = 0.02, cap: float = 0.5, factor: float = 1.5,
             jitter: bool = True) -> Iterator[float]:
    """Delays: `first`, then `factor` times more each time, capped at `cap`; with
    `jitter`, each one 0.5 to 1.5 times that, so writers that collided drift apart."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.5) if jitter else delay
        delay = min(delay * factor, cap)


def retry(attempt: Callable[[], T], *, retry_on: tuple[type[Exception], ...], what: str,
          deadline: float | None = None, stop: threading.Event | None = None,
          delays: Iterator[float] | None = None) -> T:
    """`attempt()` until it returns, retrying the errors in `retry_on` after each delay of
    `delays` (default: 1 s doubling to 60 s), logging "cannot <what> yet".

    The last error is raised again once the next try would start after `deadline` (a
    `time.monotonic()` value; None: never) or when `stop` is set while waiting.
    """
    for delay in delays or backoffs(first=1.0, cap=60.0, factor=2.0, jitter=False):
        try:
            return attempt()
        except retry_on as error:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            problem = str(error).strip().splitlines()[-1] if str(error).strip() else \
                type(error).__name__
            log.warning("cannot %s yet (%s); retrying in %.1f s", what, problem, delay)
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                time.sleep(delay)
    raise AssertionError("backoffs() never ends")
