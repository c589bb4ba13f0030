"""huey's storage, prompt: a task this process queues starts at once.

huey's consumer threads look for work, and sleep between looks when they find none (up to
the consumer's `max_delay`).  That sleep would come on top of every wake-up.  On a
storage that says it blocks, they do not sleep: `dequeue` itself waits, and whatever
queues a message (the intake, through the ledger; huey's scheduler, for a task with an
`eta`) ends the wait.
"""

from __future__ import annotations

import threading
from typing import Any

from picluster.node.ledger import Storage

__all__ = ["PromptStorage"]

# How long an idle consumer thread waits before it looks again: what it slept before.
_IDLE = 0.5


class PromptStorage(Storage):
    """`Storage` whose `dequeue` waits, up to half a second, for this process to queue a
    task when none is there."""

    blocking = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued = threading.Condition()
        self._enqueues = 0  # counts enqueues, so one between a look and the wait is not missed

    def enqueued(self) -> None:
        with self._queued:
            self._enqueues += 1
            self._queued.notify_all()

    def dequeue(self) -> bytes | None:
        with self._queued:
            seen = self._enqueues
        data = super().dequeue()
        if data is None:
            with self._queued:
                self._queued.wait_for(lambda: self._enqueues != seen, _IDLE)
            data = super().dequeue()
        return data
