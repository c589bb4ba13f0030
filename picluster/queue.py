"""The task queue in git: producers write signed task files, nodes read their own.

Producer side: `enqueue` signs and commits tasks and wakes their nodes, `wait_for` watches
for their outcomes.
Node side: `scan` reads ``queue/<mac>/`` and sorts each pending file into a task that may
run or a rejection that says why it never will.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from picluster import layout, wakeup
from picluster.gitstore import ClusterRepo, Create, Snapshot
from picluster.registry import read_cluster_vars
from picluster.signing import AllowedSigners, SignatureError, sign
from picluster.tasks import Catalogue, Outcome, Task, TaskError, new_task_id, now_iso, parse_time

__all__ = ["Pending", "enqueue", "make_task", "outcome_of", "pending_tasks", "read_signers",
           "scan", "wait_for"]

_MAX_ORIGINAL = 65536


def make_task(node: str, name: str, args: dict[str, Any], producer: str, *,
              eta: str | None = None, expires: str | None = None, retries: int = 0) -> Task:
    return Task(id=new_task_id(), node=layout.normalize_mac(node), task=name, args=args,
                created_at=now_iso(), producer=producer, eta=eta, expires=expires,
                retries=retries)


def enqueue(repo: ClusterRepo, tasks: Sequence[Task], key: Path) -> list[Task]:
    """Sign `tasks` with `key` and commit them, all in one commit, then wake their nodes;
    return the signed tasks."""
    signatures = sign([task.signed_bytes() for task in tasks], key)
    signed = [replace(task, signature=sig) for task, sig in zip(tasks, signatures, strict=True)]
    ops = [Create(layout.pending_path(t.node, t.id), t.to_json()) for t in signed]
    names = ", ".join(sorted({t.task for t in signed}))
    nodes = ", ".join(sorted({t.node for t in signed}))
    message = (f"enqueue {signed[0].task} {signed[0].id} for {signed[0].node}" if len(signed) == 1
               else f"enqueue {len(signed)} tasks ({names}) for {nodes}")
    repo.transact(ops, message)
    # Each node at the IP it has on the tip the tasks landed on.
    snapshot = repo.snapshot()
    wakeup.send(snapshot, sorted({t.node for t in signed}),
                read_cluster_vars(snapshot).wakeup_port)
    return signed


def outcome_of(snapshot: Snapshot, mac: str, task_id: str) -> Outcome | None:
    for status in ("ok", "rejected"):
        text = snapshot.read(layout.outcome_path(mac, task_id, status))
        if text is not None:
            return Outcome.from_json(text)
    return None


def wait_for(repo: ClusterRepo, tasks: Iterable[Task], timeout: float,
             interval: float = 0.1) -> dict[str, Outcome]:
    """Watch git until every task has an outcome or `timeout` passes; return those found.

    Cheaply: an `ls-remote` every `interval`, and a fetch only when main moved."""
    waiting = {t.id: t.node for t in tasks}
    found: dict[str, Outcome] = {}
    deadline = time.monotonic() + timeout
    snapshot = repo.sync()
    while True:
        for task_id, mac in list(waiting.items()):
            outcome = outcome_of(snapshot, mac, task_id)
            if outcome is not None:
                found[task_id] = outcome
                del waiting[task_id]
        if not waiting:
            return found
        tip = snapshot.commit
        while tip == snapshot.commit:
            if time.monotonic() + interval > deadline:
                return found
            time.sleep(interval)
            tip = repo.ls_remote()
        snapshot = repo.sync()


@dataclass(frozen=True)
class Pending:
    """One file in a node's queue, sorted: a `task` that may run or a `rejection`."""

    path: str
    task: Task | None = None
    rejection: Outcome | None = None


def pending_tasks(snapshot: Snapshot, mac: str) -> list[str]:
    """The names of the task files waiting in ``queue/<mac>/``."""
    return [name for name in snapshot.listdir(layout.queue_dir(mac), files=True)
            if name.endswith(".json")]


def read_signers(snapshot: Snapshot) -> AllowedSigners:
    """The keys trusted to sign tasks, with the problems of any line that is not one."""
    return AllowedSigners.parse(snapshot.read(layout.ALLOWED_SIGNERS) or "",
                                layout.ALLOWED_SIGNERS)


def scan(snapshot: Snapshot, mac: str, catalogue: Catalogue,
         known: Container[str] = ()) -> list[Pending]:
    """Every pending file in ``queue/<mac>/`` but those `known` (by id), each validated:
    schema, address, name, signature, expiry, and that it has not already run.
    Directories in the queue (done/, rejected/, anything else) are never read."""
    folder = layout.queue_dir(mac)
    signers = read_signers(snapshot)
    return [_check(snapshot, mac, f"{folder}/{name}", name, signers, catalogue)
            for name in snapshot.listdir(folder, files=True)
            if name != ".gitkeep" and name.removesuffix(".json") not in known]


def _check(snapshot: Snapshot, mac: str, path: str, name: str, signers: AllowedSigners,
           catalogue: Catalogue) -> Pending:
    stem = name.removesuffix(".json")
    # A name that cannot be an id still gets an outcome, under a name that can.
    safe = stem if layout.valid_task_id(stem) else \
        "invalid-" + "".join(c if c.isalnum() else "-" for c in stem)[:60].strip("-")
    text = snapshot.read(path) or ""

    def reject(why: str, task: Task | None = None) -> Pending:
        # Named after the file, which is where the producer looks, whatever the id says.
        return Pending(path, rejection=Outcome(
            id=safe, node=mac, status="rejected",
            task=task.task if task else None, producer=task.producer if task else None,
            error=why, received_at=now_iso(), original=text[:_MAX_ORIGINAL]))

    if not name.endswith(".json") or not layout.valid_task_id(stem):
        return reject(f"{path}: a task file is named <id>.json with an id of letters, digits, "
                      "'.', '_' and '-'")
    if not snapshot.is_regular_file(path):
        return reject(f"{path}: is a symlink or special file; a task must be a plain file")
    try:
        task = Task.from_json(text, path)
    except TaskError as error:
        return reject(str(error))
    if task.id != stem:
        return reject(f"{path}: field 'id' is '{task.id}' but the file is named {name}; "
                      "they must match", task)
    if task.node != mac:
        return reject(f"{path}: addressed to node {task.node}, but it is in {mac}'s queue",
                      task)
    if catalogue.get(task.task) is None:
        return reject(f"{path}: unknown task '{task.task}'; this node runs: "
                      f"{', '.join(catalogue.names())}", task)
    try:
        signers.verify(task.signed_bytes(), task.signature, task.producer)
    except SignatureError as error:
        return reject(f"{path}: {error}", task)
    if outcome_of(snapshot, mac, task.id) is not None:
        return reject(f"{path}: task {task.id} already has an outcome; it never runs twice",
                      task)
    if task.expires and parse_time(task.expires) < dt.datetime.now(dt.UTC):
        return reject(f"{path}: expired at {task.expires} before it could run", task)
    return Pending(path, task=task)
