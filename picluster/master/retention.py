"""Retention: outcomes do not pile up.  The master removes, from every node's queue, the
outcomes (`done/`, `rejected/`) older than `keep_outcomes` and those beyond the newest
`keep_outcomes_per_node`, in batched commits, together with the revocations left behind.
The history keeps them; nodes fetch shallow, so their clones do not.

It runs from the master's poll, at most every tenth poll.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator

from picluster import layout
from picluster.gitstore import ClusterRepo, GitError, Op, Remove, Snapshot
from picluster.results import created, queues
from picluster.settings import Settings
from picluster.tasks import Outcome, parse_time

__all__ = ["Retention"]

log = logging.getLogger(__name__)

BATCH = 2000  # removals per commit: a backlog goes in a few commits of bounded size
_EVERY_POLLS = 10


class Retention:
    """The master's removal of old outcomes."""

    def __init__(self, settings: Settings, repo: ClusterRepo,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._settings = settings
        self._repo = repo
        self._clock = clock
        self._next = 0.0  # time.monotonic() of the next run

    def run_if_due(self, is_master: bool) -> int:
        """`run()` on the master when its turn has come; how many outcomes it removed."""
        if not is_master or time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + _EVERY_POLLS * self._settings.poll_interval
        try:
            return self.run()
        except GitError as error:
            log.warning("retention: could not remove old outcomes yet: %s", error)
            return 0

    def run(self) -> int:
        """Remove what the last synced snapshot keeps beyond the retention; how many
        outcomes went."""
        snapshot = self._repo.snapshot()
        ops = list(self.expired(snapshot))
        removed = sum(1 for op in ops if "/revoked/" not in op.path)
        for first in range(0, len(ops), BATCH):
            batch = ops[first:first + BATCH]
            self._repo.transact(batch, f"retention: remove {len(batch)} old outcomes "
                                       f"({first // BATCH + 1} of "
                                       f"{(len(ops) + BATCH - 1) // BATCH})")
        if removed:
            log.info("retention: removed %d old outcomes", removed)
        return removed

    def expired(self, snapshot: Snapshot) -> Iterator[Op]:
        """The removals that bring every queue within the retention."""
        cutoff = self._clock() - dt.timedelta(seconds=self._settings.keep_outcomes)
        cap = self._settings.keep_outcomes_per_node
        for mac in queues(snapshot):
            folder = layout.queue_dir(mac)
            kept = sorted((self._made(snapshot, f"{folder}/{sub}/{name}"),
                           f"{folder}/{sub}/{name}")
                          for sub in ("done", "rejected")
                          for name in snapshot.listdir(f"{folder}/{sub}", files=True))
            over = len(kept) - cap
            for index, (made, path) in enumerate(kept):
                if index < over or made < cutoff:
                    yield Remove(path)
            pending = set(snapshot.listdir(folder, files=True))
            for name in snapshot.listdir(f"{folder}/revoked", files=True):
                made = created(name.removesuffix(".json"))
                if name not in pending and (made is None or made < cutoff):
                    yield Remove(f"{folder}/revoked/{name}")

    @staticmethod
    def _made(snapshot: Snapshot, path: str) -> dt.datetime:
        """When an outcome's task was made: from its id, else from when it finished or
        was received (a rejected file whose name was no id); the oldest time when none."""
        made = created(path.rsplit("/", 1)[1].removesuffix(".json"))
        if made is not None:
            return made
        try:
            outcome = Outcome.from_json(snapshot.read(path) or "")
            return parse_time(outcome.finished_at or outcome.received_at or "")
        except (ValueError, TypeError):
            return dt.datetime.min.replace(tzinfo=dt.UTC)
