"""The intake: this node's tasks move from git into the local huey queue, each once; after
a crash, the tasks that were running are queued again (tasks are idempotent).

A task this node already has an outcome for never runs again, whatever git says: when
its file comes back (a replay, or main rewound), the outcome is pushed again instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from huey import Huey
from huey.api import TaskWrapper

from picluster import layout
from picluster.gitstore import ClusterRepo, Snapshot
from picluster.node.ledger import STORE_ERRORS, Ledger
from picluster.node.outbox import Outbox
from picluster.node.revoking import Revoker
from picluster.queue import scan
from picluster.signing import AllowedSigners
from picluster.tasks import Catalogue, Task, parse_time

__all__ = ["Intake"]

log = logging.getLogger(__name__)


class Intake:
    """Queues the tasks in ``queue/<mac>/`` into huey, through `execute`; rejections go
    to the outbox."""

    def __init__(self, huey: Huey, execute: TaskWrapper, repo: ClusterRepo, mac: str,
                 catalogue: Catalogue, ledger: Ledger, outbox: Outbox,
                 signers: Callable[[Snapshot], AllowedSigners]) -> None:
        self._huey, self._execute = huey, execute
        self._repo, self._mac = repo, mac
        self._catalogue, self._ledger, self._outbox = catalogue, ledger, outbox
        self._signers = signers  # the signers this node trusts, after a look at a snapshot
        self._interrupted: set[str] = set()  # marked queued, but lost from huey by a crash
        self._revoker = Revoker(huey, outbox, mac)

    def take(self) -> int:
        """Move new tasks from the last synced snapshot into huey; store rejections in the
        outbox.  Returns how many tasks were queued.  A task the local store cannot take
        (a full disk) stays in git for a later poll."""
        with self._outbox.pushing:
            snapshot = self._repo.snapshot()
            try:
                ids = self._ids(snapshot)
                queued = self._ledger.queued(ids) - self._interrupted
                done = self._ledger.with_outcome(ids - queued)
                for task_id in self._outbox.again(done):
                    log.warning("task %s ran here already, but its file is back (replayed, "
                                "or main was rewound): it does not run again; its outcome is "
                                "pushed again", task_id)
            except STORE_ERRORS:
                return 0  # logged by the store
            count = 0
            signers = self._signers(snapshot)
            found = scan(snapshot, self._mac, self._catalogue, queued | done, signers=signers)
            for pending in self._revoker.sift(snapshot, signers, found, queued):
                if pending.rejection is not None:
                    log.warning("rejected %s", pending.rejection.error)
                    self._outbox.store(pending.rejection, pending.path, [])
                    continue
                assert pending.task is not None
                try:
                    if self._queue(pending.task, pending.path):
                        count += 1
                except STORE_ERRORS:
                    continue  # logged by the store
            return count

    def _queue(self, task: Task, path: str) -> bool:
        eta = parse_time(task.eta) if task.eta else None
        message = self._huey.serialize_task(self._execute.s(
            task.to_json(), path, id=task.id, eta=eta, retries=task.retries,
            # Retries wait retry_delay, then twice as long each time.
            retry_delay=task.retry_delay or 0, retry_backoff=2 if task.retry_delay else 0))
        if not self._ledger.queue(task.id, message, task.expiry(),
                                  again=task.id in self._interrupted):
            return False
        self._interrupted.discard(task.id)
        log.info("queued %s %s from %s", task.task, task.id, task.producer)
        return True

    def recover(self) -> None:
        """After a crash, tasks that were running are neither queued nor done: the first
        `take` queues them again.  (Only before huey's workers start: a running task is
        not in huey's queue either.)"""
        snapshot = self._repo.sync()
        in_huey = {t.id for t in self._huey.pending()} | {t.id for t in self._huey.scheduled()}
        for task_id in sorted(self._ledger.queued(self._ids(snapshot))):
            if task_id not in in_huey and not self._ledger.has_outcome(task_id):
                log.info("task %s was interrupted; it runs again", task_id)
                self._interrupted.add(task_id)

    def _ids(self, snapshot: Snapshot) -> set[str]:
        """The ids of the files in this node's queue that can be tasks."""
        stems = (name.removesuffix(".json")
                 for name in snapshot.listdir(layout.queue_dir(self._mac), files=True))
        return {stem for stem in stems if layout.valid_task_id(stem)}
