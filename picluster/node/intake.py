"""The intake: this node's tasks move from git into the local huey queue, each once; after
a crash, the tasks that were running are queued again (tasks are idempotent)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from huey import Huey
from huey.api import TaskWrapper

from picluster import layout
from picluster.gitstore import ClusterRepo, Snapshot
from picluster.node.ledger import Ledger
from picluster.node.outbox import Outbox
from picluster.node.revoking import Revoker
from picluster.queue import scan
from picluster.signing import AllowedSigners
from picluster.tasks import Catalogue, parse_time

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
        self._revoker = Revoker(huey, outbox, mac)

    def take(self) -> int:
        """Move new tasks from the last synced snapshot into huey; store rejections in the
        outbox.  Returns how many tasks were queued."""
        with self._outbox.pushing:
            snapshot = self._repo.snapshot()
            count = 0
            queued, signers = set(self._queued(snapshot)), self._signers(snapshot)
            found = scan(snapshot, self._mac, self._catalogue, queued, signers=signers)
            for pending in self._revoker.sift(snapshot, signers, found, queued):
                if pending.rejection is not None:
                    log.warning("rejected %s", pending.rejection.error)
                    self._outbox.store(pending.rejection, pending.path, [])
                    continue
                task = pending.task
                assert task is not None
                if not self._ledger.mark_queued(task.id):
                    continue
                eta = parse_time(task.eta) if task.eta else None
                self._huey.enqueue(self._execute.s(
                    task.to_json(), pending.path, id=task.id, eta=eta, retries=task.retries,
                    # Retries wait retry_delay, then twice as long each time.
                    retry_delay=task.retry_delay or 0, retry_backoff=2 if task.retry_delay else 0))
                log.info("queued %s %s from %s", task.task, task.id, task.producer)
                count += 1
            return count

    def recover(self) -> None:
        """After a crash, tasks that were running are neither queued nor done: forget that
        they were queued, so the first `take` queues them again."""
        snapshot = self._repo.sync()
        queued = {t.id for t in self._huey.pending()} | {t.id for t in self._huey.scheduled()}
        for task_id in self._queued(snapshot):
            if task_id not in queued and not self._ledger.has_outcome(task_id):
                log.info("task %s was interrupted; it runs again", task_id)
                self._ledger.unmark_queued(task_id)

    def _queued(self, snapshot: Snapshot) -> list[str]:
        """The ids of the files in this node's queue that went into huey already."""
        ids = (name.removesuffix(".json")
               for name in snapshot.listdir(layout.queue_dir(self._mac), files=True))
        return [task_id for task_id in ids if self._ledger.was_queued(task_id)]
