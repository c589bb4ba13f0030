"""What a node keeps about each of its tasks in huey's SQLite until the task's outcome is
in git: that it was queued (once), how many times it started, and its outcome."""

from __future__ import annotations

import json
from typing import Any

from huey.constants import EmptyData
from huey.storage import SqliteStorage

__all__ = ["Ledger", "Storage"]

_QUEUED, _OUTCOME, _ATTEMPTS = "picluster:seen:", "picluster:outcome:", "picluster:attempts:"


class Storage(SqliteStorage):
    """huey's SQLite storage with WAL and synchronous=NORMAL: a committed outcome survives
    a crash of the agent; only a power cut can lose the last ones, and then the task runs
    again.  It spares the fsync on every commit (eight per task) that FULL costs an SD
    card."""

    def _create_connection(self):  # type: ignore[no-untyped-def]
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


class Ledger:
    """A task's records in huey's storage, from the moment it is queued until `forget`."""

    def __init__(self, storage: SqliteStorage) -> None:
        self._storage = storage

    def mark_queued(self, task_id: str) -> bool:
        """Note that the task went into huey; False if it had already."""
        return bool(self._storage.put_if_empty(_QUEUED + task_id, b"1"))

    def was_queued(self, task_id: str) -> bool:
        return bool(self._storage.has_data_for_key(_QUEUED + task_id))

    def unmark_queued(self, task_id: str) -> None:
        """The task was lost from huey (a crash while it ran): it may be queued again."""
        self._storage.pop_data(_QUEUED + task_id)

    def started(self, task_id: str) -> int:
        """Count a start of the task; returns how many there were."""
        return int(self._storage.incr(_ATTEMPTS + task_id))

    def keep_outcome(self, task_id: str, record: dict[str, Any]) -> None:
        self._storage.put_data(_OUTCOME + task_id, json.dumps(record).encode())

    def has_outcome(self, task_id: str) -> bool:
        return bool(self._storage.has_data_for_key(_OUTCOME + task_id))

    def outcomes(self) -> dict[str, dict[str, Any]]:
        """Task id -> the record `keep_outcome` kept, for every outcome not yet forgotten."""
        records = {}
        for key, value in self._storage.result_items().items():
            key = key.decode() if isinstance(key, bytes) else key
            if key.startswith(_OUTCOME) and value is not EmptyData:
                records[key.removeprefix(_OUTCOME)] = json.loads(value)
        return records

    def forget(self, task_id: str) -> None:
        """The task's outcome is in git: nothing about it needs keeping here."""
        for prefix in (_OUTCOME, _QUEUED):
            self._storage.pop_data(prefix + task_id)
        self._storage.delete_counter(_ATTEMPTS + task_id)
