"""The outbox: a task's outcome is stored locally first (consumer threads never touch
git), then a flusher thread pushes outcomes, each with the removal of its pending file,
in one commit per batch, and only then marks them pushed.  So no outcome is ever lost,
and a task that finished never runs twice.

The ledger keeps pushed outcomes for a while (`picluster.node.ledger.KEEP`, or until
their tasks expire): when main is rewound (a force-push), the outcomes it lost are
pushed again.  An outcome the local store cannot take (a full disk) waits in memory and
is pushed all the same; it is stored once the store works again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

from picluster.gitstore import ClusterRepo, GitError, Op, Put, Remove, decode_ops, encode_ops
from picluster.node.ledger import STORE_ERRORS, Kept, Ledger
from picluster.tasks import Outcome

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

# Pushes of outcomes come at least this far apart, so outcomes that finish close
# together share a commit (up to about _BATCH_BYTES of JSON); one after a quiet spell
# goes at once.
_BATCH_WINDOW = 0.05
_BATCH_BYTES = 4 << 20
_PURGE_EVERY = 3600.0  # seconds between purges of the records past their keeping


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
        self._held: dict[str, Kept] = {}  # outcomes the ledger could not store yet
        self._held_lock = threading.Lock()  # consumer threads store concurrently
        self._rewound = threading.Event()
        self._next_purge = 0.0
        self._failing: str | None = None  # why the last push failed, logged once
        repo.on_rewind(self._on_rewind)

    def store(self, outcome: Outcome, pending_path: str, ops: list[Op]) -> None:
        """Keep `outcome` (and the ops its task added) until it is pushed, with the
        removal of `pending_path`."""
        kept = Kept(outcome.to_json(), outcome.path(), pending_path, encode_ops(ops))
        try:
            self._ledger.keep_outcome(outcome.id, kept)
        except STORE_ERRORS:  # logged by the store; a crash before it works runs it again
            with self._held_lock:
                self._held[outcome.id] = kept
        self._wake.set()

    def again(self, ids: Iterable[str]) -> list[str]:
        """Push the outcomes of these tasks again (their task files came back); returns
        those that had been pushed."""
        again = self._ledger.push_again(ids)
        if again:
            self._wake.set()
        return again

    def start(self, after_push: Callable[[], None]) -> None:
        """Push outcomes soon after they are stored, then call `after_push`, until `stop`."""
        threading.Thread(target=self._flusher, args=(after_push,), name="flusher",
                         daemon=True).start()

    def stop(self) -> None:
        """End the flusher; `flush` still pushes what is left."""
        self._stopping.set()
        self._wake.set()

    def _flusher(self, after_push: Callable[[], None]) -> None:
        quiet_from = 0.0  # when the last push ended
        while not self._stopping.is_set():
            self._wake.wait()
            if self._stopping.is_set():
                return
            # While pushes follow each other, what finishes during a push and the window
            # after it waits for the next one, together.
            time.sleep(max(0.0, quiet_from + _BATCH_WINDOW - time.monotonic()))
            self._wake.clear()
            try:
                self.flush()
                after_push()
            except GitError as error:
                if self._failing is None:
                    log.warning("cannot push outcomes yet, retrying at the next poll: %s",
                                error)
                self._failing = str(error)
            except Exception:
                log.exception("cannot push outcomes; retrying at the next poll")
            quiet_from = time.monotonic()

    def _on_rewind(self, seen: str, tip: str) -> None:
        # Under the clone's lock, in whichever thread fetched: note it, act in `flush`.
        self._rewound.set()
        self._wake.set()

    def flush(self) -> int:
        """Push every outcome stored, each with the removal of its pending file; mark
        them pushed only once they are in git.  Returns how many were pushed."""
        with self.pushing:
            records: dict[str, Kept] = {}
            # A store that fails (it logs that) fails only its own step; each is tried
            # again at the next flush.
            for step in (self._store_held, self._push_lost, self._purge,
                         lambda: records.update(self._ledger.outcomes())):
                with contextlib.suppress(*STORE_ERRORS):
                    step()
            with self._held_lock:
                records.update(self._held)
            batch: dict[str, Kept] = {}
            size = 0
            for task_id, kept in records.items():
                batch[task_id] = kept
                size += len(kept.outcome)
                if size > _BATCH_BYTES:
                    self._push(batch)
                    batch, size = {}, 0
            if batch:
                self._push(batch)
            if records and self._failing is not None:
                log.info("outcomes reach git again")
                self._failing = None
            return len(records)

    def _store_held(self) -> None:
        """Move the outcomes held in memory into the store, as soon as it takes them."""
        with self._held_lock:
            held = dict(self._held)
        for task_id, kept in held.items():
            self._ledger.keep_outcome(task_id, kept)
            with self._held_lock:
                self._held.pop(task_id, None)

    def _push_lost(self) -> None:
        """After main was rewound: push again the outcomes it lost."""
        if not self._rewound.is_set():
            return
        snapshot = self._repo.snapshot()
        kept = self._ledger.pushed_paths()
        again = self._ledger.push_again(
            [task_id for task_id, path in kept.items() if not snapshot.exists(path)])
        self._rewound.clear()
        if again:
            log.warning("main was rewound and lost %d outcomes this node had pushed; pushing "
                        "them again: %s", len(again), ", ".join(sorted(again)))
        else:
            log.info("main was rewound; no outcome this node keeps is missing from it now")

    def _purge(self) -> None:
        if time.monotonic() >= self._next_purge:
            self._ledger.purge()
            self._next_purge = time.monotonic() + _PURGE_EVERY

    def _push(self, records: dict[str, Kept]) -> None:
        """One commit: each outcome, the removal of its pending file, and any ops its task
        added; then mark them pushed."""
        ops: list[Op] = []
        statuses: dict[str, int] = {}
        for kept in records.values():
            status = Outcome.from_json(kept.outcome).status
            statuses[status] = statuses.get(status, 0) + 1
            ops += [Put(kept.path, kept.outcome), Remove(kept.pending)]
            ops += decode_ops(kept.ops)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        result = self._repo.transact(ops, f"{self._mac}: outcomes of {len(records)} tasks "
                                          f"({summary})")
        # If the store fails (it logs that), they are pushed again, a no-op, until it works.
        with contextlib.suppress(*STORE_ERRORS):
            self._ledger.pushed(records)
        if result.commit:
            log.info("pushed %d outcomes (%s)", len(records), summary)
        self._pushed()
