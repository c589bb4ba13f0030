"""Revocations on the node: a task revoked before it runs never runs, and its outcome says
so (`picluster.revoke`).  One still waiting in git is not queued; one waiting in huey (an
eta, a retry delay) is revoked there too, with huey's own revoke."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from huey import Huey

from picluster import layout
from picluster.gitstore import Remove, Snapshot
from picluster.node.outbox import Outbox
from picluster.queue import Pending
from picluster.revoke import Revocation, revocations
from picluster.signing import AllowedSigners
from picluster.tasks import Outcome, now_iso

__all__ = ["Revoker"]

log = logging.getLogger(__name__)


class Revoker:
    """Turns the revocations in this node's queue into `revoked` outcomes."""

    def __init__(self, huey: Huey, outbox: Outbox, mac: str) -> None:
        self._huey, self._outbox, self._mac = huey, outbox, mac
        self._said: set[str] = set()  # problems and running tasks already logged

    def sift(self, snapshot: Snapshot, signers: AllowedSigners, found: Sequence[Pending],
             queued: Iterable[str]) -> list[Pending]:
        """`found` (the new files of this node's queue) less the tasks revoked, which get
        their outcome instead; tasks `queued` in huey already are revoked there."""
        revoked, problems = revocations(snapshot, self._mac, signers)
        self._say(problems)
        if not revoked:
            return list(found)
        kept = []
        for pending in found:
            if pending.task is not None and pending.task.id in revoked:
                self._revoked(revoked[pending.task.id], pending.path, pending.task.task)
            else:
                kept.append(pending)
        waiting = {t.id for t in self._huey.pending()} | {t.id for t in self._huey.scheduled()}
        for task_id in set(queued) & revoked.keys():
            if task_id in waiting:
                self._huey.revoke_by_id(task_id, revoke_once=True)
                self._revoked(revoked[task_id], layout.pending_path(self._mac, task_id), None)
            else:
                self._say([f"task {task_id} started before its revocation; it runs to its end"])
        return kept

    def _revoked(self, revocation: Revocation, pending: str, task: str | None) -> None:
        log.info("task %s revoked by %s", revocation.id, revocation.producer)
        outcome = Outcome(id=revocation.id, node=self._mac, status="revoked", task=task,
                          producer=revocation.producer, received_at=now_iso(),
                          error=f"revoked by {revocation.producer} at {revocation.revoked_at} "
                                "before it ran")
        self._outbox.store(outcome, pending, [Remove(revocation.path())])

    def _say(self, lines: Iterable[str]) -> None:
        for line in lines:
            if line not in self._said:
                self._said.add(line)
                log.warning("%s", line)
