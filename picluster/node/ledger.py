"""What a node keeps about its tasks in huey's SQLite store (huey.db).

*   While a task waits or runs: that it was queued (once; with the huey message, in one
    transaction), and how many times it started.
*   Its outcome, from the moment it is stored until well after it reached git: the
    node's own record of what it ran and judged.  A task file that comes back (a replay,
    or a force-push that rewound main) never runs again, and an outcome a rewind dropped
    is pushed again.  A record stays until its task expires, and at least `KEEP` after
    its push.

A write that fails (a full disk, an I/O error) is logged once, with its cause, and once
more when writes work again; nothing is lost meanwhile: a task not queued stays in git
and is queued at a later poll, and huey's messages that cannot be stored wait in memory
(after a crash, the task runs again, as after any crash while it ran).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, NamedTuple

from huey.storage import SqliteStorage

__all__ = ["FULL_DISK_ENV", "KEEP", "STORE_ERRORS", "Kept", "Ledger", "Storage"]

log = logging.getLogger(__name__)

_QUEUED, _ATTEMPTS = "picluster:seen:", "picluster:attempts:"
# How long an outcome is kept after its push, at least (its task's expiry may be later).
KEEP = dt.timedelta(days=1)
# What a failing store raises.
STORE_ERRORS = (sqlite3.Error, OSError)
# Tests only: while the file this names exists, every write to huey.db fails as on a
# full disk, so a real agent can be tried against one.
FULL_DISK_ENV = "PICLUSTER_TEST_FULL_DISK"

# One row per outcome: waiting for its push (pushed is null), then the record of it.
_OUTCOMES = ("create table if not exists picluster_outcome ("
             "id text primary key, path text not null, outcome text not null, "
             "pending blob not null, ops text not null, pushed real, "
             "keep_until real not null)")
_WAITING = ("create index if not exists picluster_outcome_waiting "
            "on picluster_outcome (id) where pushed is null")
_CHUNK = 500  # ids per `in (...)`: far below SQLite's limit on parameters


class Kept(NamedTuple):
    """An outcome as the ledger keeps it: its JSON, its repository path, the pending
    file its push removes, and the ops its task added (encoded)."""

    outcome: str
    path: str
    pending: str
    ops: list[dict[str, str]]


class _Trouble:
    """The store's health, so a full disk is logged once, not at every poll."""

    def __init__(self, filename: str) -> None:
        self._filename = filename
        self._since: float | None = None
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> None:
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
        if first:
            log.warning("cannot use %s (%s): new tasks wait in git and outcomes in memory "
                        "until it works again; retrying", self._filename, error)

    def cleared(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.info("%s works again after %.0f s", self._filename, time.monotonic() - since)


class Storage(SqliteStorage):
    """huey's SQLite storage with WAL and synchronous=NORMAL (a committed outcome
    survives a crash of the agent; only a power cut can lose the last ones, and then the
    task runs again, sparing the SD card an fsync per commit), the ledger's table, and
    a queue that outlives a full disk: messages huey cannot store wait in memory."""

    ddl: ClassVar[list[str]] = [*SqliteStorage.ddl, _OUTCOMES, _WAITING]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before the schema is created: that is a write already.
        self._trouble = _Trouble(str(kwargs.get("filename", "huey.db")))
        self._full_disk = os.environ.get(FULL_DISK_ENV)
        self._held: deque[bytes] = deque()  # messages for the queue
        self._held_schedule: list[tuple[float, bytes]] = []  # (when, message)
        self._held_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _create_connection(self):  # type: ignore[no-untyped-def]
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn

    @contextlib.contextmanager
    def db(self, commit: bool = False, close: bool = False) -> Iterator[sqlite3.Cursor]:
        """huey's one way into the database, reporting failures (once) and recovery."""
        try:
            if commit and self._full_disk and os.path.exists(self._full_disk):
                raise sqlite3.OperationalError("database or disk is full")
            with super().db(commit, close) as cursor:
                yield cursor
        except sqlite3.IntegrityError:  # a key that exists: an answer, not a failure
            raise
        except STORE_ERRORS as error:
            self._trouble.failed(error)
            raise
        if commit:
            self._trouble.cleared()

    # huey's queue: what cannot be stored waits in memory, and what cannot be read is
    # "nothing yet", so huey's threads neither lose a task nor log every 0.1 s.

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        try:
            super().enqueue(data, priority)
        except STORE_ERRORS:
            self._held.append(data)
        self.enqueued()

    def enqueued(self) -> None:
        """Called after a message joined the queue, through `enqueue` or the ledger's own
        insert: a storage whose `dequeue` waits ends the wait here."""

    def dequeue(self) -> bytes | None:
        with contextlib.suppress(IndexError):
            return self._held.popleft()
        try:
            return super().dequeue()
        except STORE_ERRORS:
            return None

    def delete_data(self, key: str) -> bool:
        # After each task huey deletes a revocation key it never wrote.
        try:
            return bool(super().delete_data(key))
        except STORE_ERRORS:
            return False

    def add_to_schedule(self, data: bytes, ts: dt.datetime) -> None:
        try:
            super().add_to_schedule(data, ts)
        except STORE_ERRORS:
            with self._held_lock:
                self._held_schedule.append((ts.timestamp(), data))

    def read_schedule(self, ts: dt.datetime) -> list[bytes]:
        with self._held_lock:
            due = [data for when, data in self._held_schedule if when <= ts.timestamp()]
            self._held_schedule = [(when, data) for when, data in self._held_schedule
                                   if when > ts.timestamp()]
        try:
            return due + super().read_schedule(ts)
        except STORE_ERRORS:
            return due


def _encode(path: str) -> bytes:
    """A repository path as the ledger stores it: a name that is not UTF-8 (read with
    surrogate escapes) keeps its bytes."""
    return path.encode("utf-8", "surrogateescape")


def _chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    items = list(ids)
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


def _marks(chunk: list[str]) -> str:
    return ",".join("?" * len(chunk))


class Ledger:
    """A node's records of its tasks in huey's storage."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._name = storage.name

    # -- queued and running ------------------------------------------------------------

    def queue(self, task_id: str, message: bytes, keep_until: dt.datetime, *,
              again: bool = False) -> bool:
        """Mark the task queued and put huey's `message` in its queue, both or neither;
        False (nothing done) if it was marked already, unless `again` (it was
        interrupted).  Its outcome will be kept until `keep_until` at least."""
        verb = "insert or replace" if again else "insert"
        try:
            with self._storage.db(commit=True) as cursor:
                cursor.execute(f"{verb} into kv (queue, key, value) values (?, ?, ?)",
                               (self._name, _QUEUED + task_id,
                                str(keep_until.timestamp()).encode()))
                cursor.execute("insert into task (queue, data, priority) values (?, ?, 0)",
                               (self._name, message))
        except sqlite3.IntegrityError:
            return False
        self._storage.enqueued()
        return True

    def queued(self, ids: Iterable[str]) -> set[str]:
        """Those of `ids` marked queued (and not yet pushed)."""
        found: set[str] = set()
        for chunk in _chunks(_QUEUED + task_id for task_id in ids):
            rows = self._storage.sql(f"select key from kv where queue = ? and key in "
                                     f"({_marks(chunk)})", (self._name, *chunk), results=True)
            found |= {key.removeprefix(_QUEUED) for (key,) in rows}
        return found

    def started(self, task_id: str) -> int:
        """Count a start of the task; returns how many there were (when the count cannot
        be stored, one more than it says; when it cannot be read either, 1)."""
        with contextlib.suppress(*STORE_ERRORS):
            return int(self._storage.incr(_ATTEMPTS + task_id))
        with contextlib.suppress(*STORE_ERRORS):
            rows = self._storage.sql("select value from counter where queue = ? and key = ?",
                                     (self._name, _ATTEMPTS + task_id), results=True)
            return int(rows[0][0]) + 1 if rows else 1
        return 1

    # -- outcomes ----------------------------------------------------------------------

    def keep_outcome(self, task_id: str, kept: Kept) -> None:
        """Keep the outcome until it is pushed (`outcomes`), then as the record that the
        task ran: until its task expires (said when it was queued), at least `KEEP`."""
        self._storage.sql(
            "insert or replace into picluster_outcome (id, path, outcome, pending, ops, "
            "pushed, keep_until) values (?, ?, ?, ?, ?, null, max(?, coalesce((select "
            "cast(value as real) from kv where queue = ? and key = ?), 0)))",
            (task_id, kept.path, kept.outcome, _encode(kept.pending), json.dumps(kept.ops),
             time.time() + KEEP.total_seconds(), self._name, _QUEUED + task_id), commit=True)

    def has_outcome(self, task_id: str) -> bool:
        return bool(self._storage.sql("select 1 from picluster_outcome where id = ?",
                                      (task_id,), results=True))

    def outcomes(self) -> dict[str, Kept]:
        """Task id -> its outcome, for every outcome waiting to be pushed."""
        rows = self._storage.sql("select id, outcome, path, pending, ops from "
                                 "picluster_outcome where pushed is null", results=True)
        return {task_id: Kept(outcome, path, bytes(pending).decode("utf-8", "surrogateescape"),
                              json.loads(ops))
                for task_id, outcome, path, pending, ops in rows}

    def pushed(self, ids: Iterable[str]) -> None:
        """These outcomes are in git: keep them as records; their tasks' queue marks and
        start counts go."""
        now = time.time()
        with self._storage.db(commit=True) as cursor:
            for chunk in _chunks(ids):
                cursor.execute(f"update picluster_outcome set pushed = ? where id in "
                               f"({_marks(chunk)})", (now, *chunk))
                for prefix, table in ((_QUEUED, "kv"), (_ATTEMPTS, "counter")):
                    cursor.execute(f"delete from {table} where queue = ? and key in "
                                   f"({_marks(chunk)})",
                                   (self._name, *(prefix + task_id for task_id in chunk)))

    def with_outcome(self, ids: Iterable[str]) -> set[str]:
        """Those of `ids` with an outcome here, pushed or not: they never run (again)."""
        found: set[str] = set()
        for chunk in _chunks(ids):
            rows = self._storage.sql(f"select id from picluster_outcome where id in "
                                     f"({_marks(chunk)})", chunk, results=True)
            found |= {task_id for (task_id,) in rows}
        return found

    def pushed_paths(self) -> dict[str, str]:
        """Task id -> outcome path, for every outcome pushed and still kept."""
        rows = self._storage.sql("select id, path from picluster_outcome "
                                 "where pushed is not null", results=True)
        return dict(rows)

    def push_again(self, ids: Iterable[str]) -> list[str]:
        """Those of `ids` that had been pushed wait to be pushed again, without their
        tasks' ops (a registration is made afresh at every poll); returns them."""
        again: list[str] = []
        chunks = list(_chunks(ids))
        if not chunks:  # the common case: no write at all
            return again
        with self._storage.db(commit=True) as cursor:
            for chunk in chunks:
                cursor.execute(f"select id from picluster_outcome where pushed is not null "
                               f"and id in ({_marks(chunk)})", chunk)
                found = [task_id for (task_id,) in cursor.fetchall()]
                cursor.execute(f"update picluster_outcome set pushed = null, ops = '[]' "
                               f"where id in ({_marks(found)})", found)
                again += found
        return again

    def purge(self) -> int:
        """Forget the records past their keeping; returns how many."""
        with self._storage.db(commit=True) as cursor:
            cursor.execute("delete from picluster_outcome where pushed is not null "
                           "and keep_until < ?", (time.time(),))
            return cursor.rowcount
