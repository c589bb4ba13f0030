"""The outbox: a task's outcome is stored locally first (consumer threads never touch
git), then a flusher thread pushes outcomes, each with the removal of its pending file,
in one commit per batch, and only then forgets them.  So no outcome is ever lost, and a
task that finished never runs twice."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from picluster.gitstore import ClusterRepo, GitError, Op, Put, Remove, decode_ops, encode_ops
from picluster.node.ledger import Ledger
from picluster.tasks import Outcome

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

# Outcomes that finish close together share a commit, up to about this much JSON.
_BATCH_WINDOW = 0.05
_BATCH_BYTES = 4 << 20


class Outbox:
    """This node's outcomes on their way to git."""

    def __init__(self, ledger: Ledger, repo: ClusterRepo, mac: str,
                 pushed: Callable[[], None] = lambda: None) -> None:
        self._ledger = ledger
        self._repo = repo
        self._mac = mac
        self._pushed = pushed  # called after each push of outcomes (the agent wakes the master)
        # Held while outcomes are pushed.  Whoever queues tasks from git holds it too: a
        # snapshot from before a push would queue a finished task again.
        self.pushing = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def store(self, outcome: Outcome, pending_path: str, ops: list[Op]) -> None:
        """Keep `outcome` (and the ops its task added) until it is pushed, with the
        removal of `pending_path`."""
        self._ledger.keep_outcome(outcome.id, {"outcome": outcome.to_json(),
                                               "pending": pending_path,
                                               "ops": encode_ops(ops)})
        self._wake.set()

    def start(self, after_push: Callable[[], None]) -> None:
        """Push outcomes soon after they are stored, then call `after_push`, until `stop`."""
        threading.Thread(target=self._flusher, args=(after_push,), name="flusher",
                         daemon=True).start()

    def stop(self) -> None:
        """End the flusher; `flush` still pushes what is left."""
        self._stopping.set()
        self._wake.set()

    def _flusher(self, after_push: Callable[[], None]) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            if self._stopping.is_set():
                return
            time.sleep(_BATCH_WINDOW)
            self._wake.clear()
            try:
                self.flush()
                after_push()
            except GitError as error:
                log.warning("cannot push outcomes yet, retrying at the next poll: %s", error)
            except Exception:
                log.exception("cannot push outcomes; retrying at the next poll")

    def flush(self) -> int:
        """Push every outcome stored, each with the removal of its pending file; forget
        them locally only once they are in git.  Returns how many were pushed."""
        with self.pushing:
            records = self._ledger.outcomes()
            batch: dict[str, dict[str, Any]] = {}
            size = 0
            for task_id, record in records.items():
                batch[task_id] = record
                size += len(record["outcome"])
                if size > _BATCH_BYTES:
                    self._push(batch)
                    batch, size = {}, 0
            if batch:
                self._push(batch)
            return len(records)

    def _push(self, records: dict[str, dict[str, Any]]) -> None:
        """One commit: each outcome, the removal of its pending file, and any ops its task
        added; then forget them locally."""
        ops: list[Op] = []
        statuses: dict[str, int] = {}
        for record in records.values():
            outcome = Outcome.from_json(record["outcome"])
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
            ops += [Put(outcome.path(), record["outcome"]), Remove(record["pending"])]
            ops += decode_ops(record["ops"])
        summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        self._repo.transact(ops, f"{self._mac}: outcomes of {len(records)} tasks ({summary})")
        for task_id in records:
            self._ledger.forget(task_id)
        log.info("pushed %d outcomes (%s)", len(records), summary)
        self._pushed()
