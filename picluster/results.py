"""Results: a task's outcome by id, and the tasks of the queues, read from one snapshot.

Ids sort by creation time (`picluster.tasks.new_task_id`), so a listing filters by time
on the names alone and reads only the files it shows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from picluster import layout
from picluster.gitstore import Snapshot
from picluster.queue import outcome_of
from picluster.tasks import Outcome
from picluster.timespec import iso

__all__ = ["STATUSES", "Located", "created", "locate", "queues", "tasks"]

STATUSES = ("pending", "ok", "error", "timeout", "rejected", "revoked")


def created(task_id: str) -> dt.datetime | None:
    """When a task was made, from its id (None: an id picluster did not make)."""
    try:
        return dt.datetime.strptime(task_id.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(
            tzinfo=dt.UTC)
    except ValueError:
        return None


def queues(snapshot: Snapshot) -> list[str]:
    """The MACs that have a queue in the repository."""
    macs = []
    for name in snapshot.listdir(layout.QUEUE_DIR):
        try:
            if layout.normalize_mac(name) == name:
                macs.append(name)
        except ValueError:
            continue
    return macs


@dataclass(frozen=True)
class Located:
    """Where a task id is: its node, whether its file still waits, and its outcome."""

    node: str
    pending: bool  # its task file is still in the queue
    outcome: Outcome | None
    revoked: bool  # a revocation waits for the node


def locate(snapshot: Snapshot, task_id: str) -> list[Located]:
    """Every queue that holds task `task_id` (pending, revoked, or with an outcome)."""
    found = []
    for mac in queues(snapshot):
        pending = snapshot.read(layout.pending_path(mac, task_id)) is not None
        try:
            outcome = outcome_of(snapshot, mac, task_id)
        except (ValueError, TypeError):
            outcome = Outcome(id=task_id, node=mac, status="unreadable")
        revoked = snapshot.read(layout.revoked_path(mac, task_id)) is not None
        if pending or outcome or revoked:
            found.append(Located(mac, pending, outcome, revoked))
    return found


def _read(snapshot: Snapshot, path: str) -> dict[str, Any]:
    try:
        data = json.loads(snapshot.read(path) or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def tasks(snapshot: Snapshot, *, nodes: Collection[str] = (),
          statuses: Collection[str] = (), since: dt.datetime | None = None,
          limit: int = 0) -> list[dict[str, Any]]:
    """The tasks in the queues, oldest first, each a row: id, node, task, status,
    created, finished_at, producer, error.  Only those of `nodes`, with one of
    `statuses`, made at or after `since` (when given); with `limit`, the newest that
    many."""
    folders = {"pending": "", "done": "/done", "rejected": "/rejected"}
    if statuses:  # the folders whose files may have one of the statuses wanted
        folders = {k: v for k, v in folders.items() if
                   (k == "pending" and "pending" in statuses) or
                   (k == "done" and {"ok", "error", "timeout"} & set(statuses)) or
                   (k == "rejected" and {"rejected", "revoked"} & set(statuses))}
    names = []
    for mac in queues(snapshot):
        if nodes and mac not in nodes:
            continue
        for kind, folder in folders.items():
            for name in snapshot.listdir(layout.queue_dir(mac) + folder, files=True):
                task_id = name.removesuffix(".json")
                if not name.endswith(".json"):
                    continue
                made = created(task_id)
                if since is not None and (made is None or made < since):
                    continue
                names.append((made or dt.datetime.min.replace(tzinfo=dt.UTC), task_id, mac,
                              kind, f"{layout.queue_dir(mac)}{folder}/{name}"))
    names.sort()
    rows = []
    for made, task_id, mac, kind, path in names:
        data = _read(snapshot, path)
        status = "pending" if kind == "pending" else str(data.get("status", "unreadable"))
        if statuses and status not in statuses:
            continue
        rows.append({"id": task_id, "node": mac, "task": data.get("task"), "status": status,
                     "created": iso(made) if made.year > 1 else None,
                     "finished_at": data.get("finished_at"),
                     "producer": data.get("producer"), "error": data.get("error")})
    return rows[-limit:] if limit else rows
